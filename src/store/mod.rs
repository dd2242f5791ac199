//! What the pipeline keeps between exchanges. Today: sessions, in a
//! bounded in-memory cache that expires with the event retention.

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

/// Where sessions live.
pub trait SessionStore: Send + Sync {
    fn get(&self, key: &str) -> Option<Session>;
    fn put(&self, key: &str, session: Session);
}

/// Sessions in a bounded cache.
pub struct MemorySessions {
    cache: moka::sync::Cache<String, Arc<Session>>,
}

impl MemorySessions {
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(ttl)
                .build(),
        }
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
