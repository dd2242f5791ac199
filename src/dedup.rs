//! The dedup stage: an event whose UUID was seen within the TTL is
//! dropped. Bounded by capacity: the oldest entries go first.
//!
//! Every entry lives exactly `ttl` from its insertion, so insertion order
//! is expiry order: a FIFO of 128-bit keys beside a hash set of them is
//! all it takes (about 60 bytes an entry with the set's spare room,
//! against ~200 for a general cache keyed by `String`: 1,000,000 UUIDs
//! in ~60 MiB). `event-<uuid>` is kept as the UUID's 128 bits; any other
//! string as a name-based UUID of it (SHA-1: no two collide in practice).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Seen event UUIDs.
pub struct Dedup {
    seen: Mutex<Seen>,
    capacity: usize,
    ttl: Duration,
    epoch: Instant,
}

#[derive(Default)]
struct Seen {
    keys: HashSet<u128>,
    /// Oldest first: (key, milliseconds after `epoch` it was inserted).
    order: VecDeque<([u64; 2], u64)>,
}

impl Dedup {
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            seen: Mutex::new(Seen::default()),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
            ttl,
            epoch: Instant::now(),
        }
    }

    /// True the first time `uuid` is offered within the TTL; atomic, so
    /// two concurrent offers of one UUID let exactly one through.
    pub fn first_seen(&self, uuid: &str) -> bool {
        let key = key_of(uuid);
        let now = self.epoch.elapsed().as_millis() as u64;
        let ttl = self.ttl.as_millis() as u64;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.expire(now, ttl);
        if seen.keys.contains(&key) {
            return false;
        }
        while seen.order.len() >= self.capacity {
            seen.pop_oldest();
        }
        seen.keys.insert(key);
        seen.order.push_back((split(key), now));
        true
    }

    /// How many UUIDs are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .order
            .len()
    }
}

impl Seen {
    /// Forgets entries `ttl` old or older at `now`.
    fn expire(&mut self, now: u64, ttl: u64) {
        while let Some(&(_, at)) = self.order.front() {
            if at.saturating_add(ttl) > now {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((key, _)) = self.order.pop_front() {
            self.keys.remove(&join(key));
        }
        // Give memory back once a burst has expired.
        if self.keys.capacity() > 4 * self.keys.len().max(1024) {
            self.keys.shrink_to_fit();
            self.order.shrink_to_fit();
        }
    }
}

/// 128 bits for an event UUID: `event-<uuid>` (what derive gives) as
/// the UUID's own bits, any other string hashed into a name-based UUID.
fn key_of(uuid: &str) -> u128 {
    match uuid.strip_prefix("event-").map(Uuid::try_parse) {
        Some(Ok(u)) => u.as_u128(),
        _ => Uuid::new_v5(&Uuid::NAMESPACE_OID, uuid.as_bytes()).as_u128(),
    }
}

fn split(key: u128) -> [u64; 2] {
    [(key >> 64) as u64, key as u64]
}

fn join(key: [u64; 2]) -> u128 {
    (u128::from(key[0]) << 64) | u128::from(key[1])
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
        let u = "event-34cbc6e7-7f94-4a9a-8f26-e5bfbee90f18";
        assert!(d.first_seen(u));
        assert!(!d.first_seen(u));
        // Another string, though the same UUID inside.
        assert!(d.first_seen("34cbc6e7-7f94-4a9a-8f26-e5bfbee90f18"));
    }

    #[test]
    fn forgets_after_the_ttl() {
        let d = Dedup::new(100, Duration::from_millis(50));
        assert!(d.first_seen("event-a"));
        std::thread::sleep(Duration::from_millis(120));
        assert!(d.first_seen("event-a"));
    }

    #[test]
    fn the_oldest_go_first_past_the_capacity() {
        let d = Dedup::new(3, Duration::from_secs(60));
        for u in ["event-a", "event-b", "event-c", "event-d"] {
            assert!(d.first_seen(u));
        }
        assert_eq!(d.len(), 3);
        assert!(!d.first_seen("event-d"));
        assert!(!d.first_seen("event-b"));
        // `a` was pushed out by `d`.
        assert!(d.first_seen("event-a"));
    }
}
