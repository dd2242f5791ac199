//! What the pipeline keeps between exchanges: the outbox, sessions and the
//! event log, in the embedded store ([`sqlite`]), with a bounded cache in
//! front of sessions.

pub mod events;
pub mod handoff;
pub mod jetstream;
pub mod sqlite;

pub use events::{DurableEventLog, EventLog, Logged};
pub use sqlite::Store;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One importer session: its key as the first event typed it, and what
/// routes remembered about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub key: Value,
    pub fields: Map<String, Value>,
}

/// Where the pipeline hands deliveries to the deliver stage.
pub trait Outbox: Send + Sync {
    /// Accepts a delivery of `event` to `webhook`: durable (embedded) or
    /// on its way to NATS (JetStream) when it returns `Ok`.
    fn enqueue(
        &self,
        webhook: &str,
        event: Arc<sqlite::StoredEvent>,
    ) -> Result<(), sqlite::StoreError>;
}

impl Outbox for sqlite::Store {
    fn enqueue(
        &self,
        webhook: &str,
        event: Arc<sqlite::StoredEvent>,
    ) -> Result<(), sqlite::StoreError> {
        self.insert_delivery(webhook, event)
    }
}

/// Where sessions live.
pub trait SessionStore: Send + Sync {
    fn get(&self, key: &str) -> Option<Session>;
    fn put(&self, key: &str, session: Session);
    /// Reads `keys` ahead, all at once, so the `get`s that follow answer
    /// from memory instead of waiting for a read each. A store whose reads
    /// are local has nothing to do.
    fn prefetch(&self, _keys: Vec<String>) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Sessions in a cache bounded in bytes (approximately: keys, strings, a
/// few bytes per value and the cache's own bookkeeping per entry), least
/// recently used first out.
pub struct MemorySessions {
    cache: moka::sync::Cache<String, Arc<Session>>,
}

impl MemorySessions {
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, s: &Arc<Session>| {
                let fields: usize = s.fields.iter().map(|(k, v)| k.len() + approx_size(v)).sum();
                let size = ENTRY_OVERHEAD + key.len() + approx_size(&s.key) + fields;
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .time_to_idle(ttl)
            .build();
        Self { cache }
    }
}

/// What a cache entry costs beyond its key and value: moka's entry, its
/// place in the eviction lists and the hash table, the `Arc` (measured
/// with heaptrack: docs/BENCHMARKS.md, "Memory with any backlog").
pub const ENTRY_OVERHEAD: usize = 160;

/// Roughly the bytes a JSON value holds.
fn approx_size(v: &Value) -> usize {
    match v {
        Value::String(s) => 24 + s.len(),
        Value::Array(items) => 24 + items.iter().map(approx_size).sum::<usize>(),
        Value::Object(m) => {
            32 + m
                .iter()
                .map(|(k, v)| 24 + k.len() + approx_size(v))
                .sum::<usize>()
        }
        _ => 16,
    }
}

impl MemorySessions {
    pub fn forget(&self, key: &str) {
        self.cache.invalidate(key);
    }
}

impl SessionStore for MemorySessions {
    fn get(&self, key: &str) -> Option<Session> {
        self.cache.get(key).map(|s| (*s).clone())
    }

    fn put(&self, key: &str, session: Session) {
        self.cache.insert(key.to_string(), Arc::new(session));
    }
}

/// The store key of a session key value: `42` and `"42"` are one session.
pub fn session_key(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(_) | Value::Array(_) | Value::Object(_) => Some(value.to_string()),
        _ => None,
    }
}

/// Sessions in the embedded store, with a write-through cache in front so
/// the pipeline always reads its own last write.
pub struct DurableSessions {
    cache: MemorySessions,
    store: Arc<sqlite::Store>,
}

impl DurableSessions {
    pub fn new(store: Arc<sqlite::Store>, cache_bytes: u64, ttl: Duration) -> Self {
        Self {
            cache: MemorySessions::new(cache_bytes, ttl),
            store,
        }
    }
}

impl SessionStore for DurableSessions {
    fn get(&self, key: &str) -> Option<Session> {
        if let Some(s) = self.cache.get(key) {
            return Some(s);
        }
        let json = self.store.get_session(key).ok()??;
        let session: Session = serde_json::from_str(&json).ok()?;
        self.cache.put(key, session.clone());
        Some(session)
    }

    fn put(&self, key: &str, session: Session) {
        if let Err(e) = self
            .store
            .put_session(key, serde_json::to_string(&session).unwrap_or_default())
        {
            tracing::error!(error = %e, "session not stored");
        }
        self.cache.put(key, session);
    }
}
