//! Importer sessions: what routes remembered about each, found by its key
//! or an alias. One trait, with the in-memory cache, the embedded store's
//! implementation and JetStream's side by side.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::jetstream::{token, JetStream, Write, READ_TIMEOUT, WINDOW};
use rusqlite::OptionalExtension as _;

use super::sqlite::{self, lock, now_ms, Op, Store, StoreError};

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
    /// Whether the store holds `key`, without copying it out.
    fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
    /// Reads `keys` ahead, all at once, so the `get`s that follow answer
    /// from memory instead of waiting for a read each. A store whose reads
    /// are local has nothing to do.
    fn prefetch(&self, _keys: Vec<String>) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Whether [`SessionStore::prefetch`] does anything: when not, the
    /// keys are not worked out for it.
    fn prefetches(&self) -> bool {
        false
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
    /// Whether `key` is cached, without copying it out.
    pub fn contains(&self, key: &str) -> bool {
        self.cache.contains_key(key)
    }

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

    fn contains(&self, key: &str) -> bool {
        MemorySessions::contains(self, key)
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
/// the pipeline always reads its own last write, and a filter of the keys
/// the store holds so a session never seen costs no read.
pub struct DurableSessions {
    cache: MemorySessions,
    store: Arc<sqlite::Store>,
    known: KnownKeys,
}

impl DurableSessions {
    /// `alone`: no other process writes the store (false while an upgrade
    /// hands over: see [`DurableSessions::now_alone`]).
    pub fn new(store: Arc<sqlite::Store>, cache_bytes: u64, ttl: Duration, alone: bool) -> Self {
        let known = KnownKeys::read(&store, alone);
        Self {
            cache: MemorySessions::new(cache_bytes, ttl),
            store,
            known,
        }
    }

    /// This process now writes the store alone (the process it took over
    /// from has exited): the keys are read again, and from then on a key
    /// not among them is known to be new.
    pub fn now_alone(&self) {
        self.known.reload(&self.store);
    }
}

/// The session keys (aliases included) the embedded store holds or held,
/// as a Bloom filter: a key not in it was never written, and is not looked
/// for on disk. A false positive (about 1%, more once more keys than
/// planned were written since the start) is a read that finds nothing, as
/// without the filter. Sized at the start for twice the keys held (at
/// least a million: about 1.2 MiB), its keys read from the store then.
struct KnownKeys {
    filter: arc_swap::ArcSwap<fastbloom::AtomicBloomFilter>,
    /// False while another process may write the store too: every key is
    /// looked for then.
    trusted: std::sync::atomic::AtomicBool,
}

/// The fewest keys a filter is sized for.
const KNOWN_KEYS_MIN: usize = 1_000_000;

impl KnownKeys {
    fn read(store: &sqlite::Store, trusted: bool) -> Self {
        let known = Self {
            filter: arc_swap::ArcSwap::from_pointee(Self::filter_for(0)),
            trusted: std::sync::atomic::AtomicBool::new(false),
        };
        if trusted {
            known.reload(store);
        }
        known
    }

    fn filter_for(keys: u64) -> fastbloom::AtomicBloomFilter {
        let expected = usize::try_from(keys.saturating_mul(2))
            .unwrap_or(usize::MAX)
            .max(KNOWN_KEYS_MIN);
        fastbloom::AtomicBloomFilter::with_false_pos(0.01).expected_items(expected)
    }

    /// Reads every key from the store into a new filter, then trusts it.
    fn reload(&self, store: &sqlite::Store) {
        use std::sync::atomic::Ordering;
        let started = std::time::Instant::now();
        let keys = store.session_count().unwrap_or(0);
        let filter = Arc::new(Self::filter_for(keys));
        // Keys put from here on go into the new filter; those put before
        // are committed by the flush, and read with the rest.
        self.filter.store(filter.clone());
        let read = store.flush().and_then(|()| {
            store.each_session_key(|key| {
                filter.insert(key);
            })
        });
        match read {
            Ok(n) => {
                self.trusted.store(true, Ordering::Release);
                tracing::debug!(keys = n, took = ?started.elapsed(), "session keys read");
            }
            Err(e) => {
                self.trusted.store(false, Ordering::Release);
                tracing::warn!(error = %e, "session keys not read; every session is looked for in the store");
            }
        }
    }

    /// False when `key` was certainly never written.
    fn may_hold(&self, key: &str) -> bool {
        !self.trusted.load(std::sync::atomic::Ordering::Acquire) || self.filter.load().contains(key)
    }

    fn insert(&self, key: &str) {
        self.filter.load().insert(key);
    }
}

impl SessionStore for DurableSessions {
    fn contains(&self, key: &str) -> bool {
        self.cache.contains(key) || (self.known.may_hold(key) && self.get(key).is_some())
    }

    fn get(&self, key: &str) -> Option<Session> {
        if let Some(s) = self.cache.get(key) {
            return Some(s);
        }
        if !self.known.may_hold(key) {
            return None;
        }
        let json = self.store.get_session(key).ok()??;
        let session: Session = serde_json::from_str(&json).ok()?;
        self.cache.put(key, session.clone());
        Some(session)
    }

    fn put(&self, key: &str, session: Session) {
        self.known.insert(key);
        if let Err(e) = self
            .store
            .put_session(key, serde_json::to_string(&session).unwrap_or_default())
        {
            tracing::error!(error = %e, "session not stored");
        }
        self.cache.put(key, session);
    }
}

/// Sessions in the embedded store: one row each (aliases included), the
/// session as JSON.
impl Store {
    pub fn get_session(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT value FROM sessions WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()
        })
    }

    /// How many session records (aliases included) the store holds.
    pub fn session_count(&self) -> Result<u64, StoreError> {
        let n: i64 =
            self.read(|c| c.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0)))?;
        Ok(n.unsigned_abs())
    }

    /// Hands every session key (aliases included) to `f`; how many.
    pub fn each_session_key(&self, mut f: impl FnMut(&str)) -> Result<u64, StoreError> {
        self.read(|c| {
            let mut keys = c.prepare("SELECT key FROM sessions")?;
            let mut rows = keys.query([])?;
            let mut n = 0;
            while let Some(row) = rows.next()? {
                f(row.get_ref(0)?.as_str().unwrap_or_default());
                n += 1;
            }
            Ok(n)
        })
    }

    pub fn put_session(&self, key: &str, value: String) -> Result<(), StoreError> {
        self.send(Op::PutSession {
            key: key.into(),
            value,
            at: now_ms(),
        })
    }
}

/// How long a prefetch's finding that a session is absent is trusted: a
/// batch's exchanges are derived well within it (the pipeline's lanes
/// hold two batches each at most), and another instance's new session is
/// missed no longer than this.
const ABSENT_FOR: Duration = Duration::from_secs(1);

impl SessionStore for JetStream {
    fn contains(&self, key: &str) -> bool {
        let kv_key = token(key);
        if self.cache.contains(&kv_key) {
            return true;
        }
        let absent = lock(&self.absent_sessions)
            .get(&kv_key)
            .is_some_and(|at| at.elapsed() < ABSENT_FOR);
        !absent && self.get(key).is_some()
    }

    fn get(&self, key: &str) -> Option<Session> {
        let kv_key = token(key);
        if let Some(s) = self.cache.get(&kv_key) {
            return Some(s);
        }
        if lock(&self.absent_sessions)
            .remove(&kv_key)
            .is_some_and(|at| at.elapsed() < ABSENT_FOR)
        {
            return None;
        }
        let read = self.block_on(self.sessions.get(kv_key.clone()));
        let Some(Ok(value)) = read else {
            // Unknown, not absent: a session built now must not replace it.
            lock(&self.unread_sessions).insert(kv_key);
            return None;
        };
        self.session_read(&kv_key, value)
    }

    fn prefetches(&self) -> bool {
        true
    }

    /// Up to [`WINDOW`] reads at once, each bounded by the read timeout; a
    /// key whose read failed is left to `get`, which tries again.
    fn prefetch(&self, keys: Vec<String>) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            lock(&self.absent_sessions).retain(|_, at| at.elapsed() < ABSENT_FOR);
            if self.client.connection_state() != async_nats::connection::State::Connected {
                return;
            }
            let mut keys: Vec<String> = keys
                .iter()
                .map(|k| token(k))
                .filter(|k| self.cache.get(k).is_none())
                .collect();
            keys.sort_unstable();
            keys.dedup();
            let reads = keys.into_iter().map(|key| async move {
                let read = tokio::time::timeout(READ_TIMEOUT, self.sessions.get(&key)).await;
                (key, read)
            });
            let read: Vec<_> = futures::stream::iter(reads)
                .buffer_unordered(WINDOW)
                .collect()
                .await;
            let mut absent = lock(&self.absent_sessions);
            for (key, read) in read {
                if let Ok(Ok(value)) = read {
                    let found = value.is_some();
                    self.session_read(&key, value);
                    if !found {
                        absent.insert(key, std::time::Instant::now());
                    }
                }
            }
        })
    }

    fn put(&self, key: &str, session: Session) {
        let kv_key = token(key);
        let body = Bytes::from(serde_json::to_vec(&session).unwrap_or_default());
        let only_if_absent = lock(&self.unread_sessions).remove(&kv_key);
        self.cache.put(&kv_key, session);
        *lock(&self.pending_sessions)
            .entry(kv_key.clone())
            .or_default() += 1;
        let write = Write::Session {
            key: kv_key.clone(),
            body,
            only_if_absent,
        };
        if let Err(e) = self.write(write) {
            tracing::error!(error = %e, "session not stored");
            self.session_written(&kv_key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(key: &str) -> Session {
        let mut fields = Map::new();
        fields.insert("template_key".into(), Value::from("contacts"));
        Session {
            key: Value::from(key),
            fields,
        }
    }

    fn sessions(store: &Arc<sqlite::Store>, alone: bool) -> DurableSessions {
        DurableSessions::new(store.clone(), 1 << 20, Duration::from_secs(3600), alone)
    }

    #[test]
    fn sessions_are_found_across_starts_and_while_another_process_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite::Store::open(dir.path()).unwrap();
        let first = sessions(&store, true);
        first.put("s1", session("s1"));
        first.put(&crate::derive::alias_key("task-1"), session("s1"));
        store.flush().unwrap();
        // A start on the same store reads its keys: what was written is
        // found, a key never written is not.
        let restarted = sessions(&store, true);
        assert_eq!(restarted.get("s1"), Some(session("s1")));
        assert_eq!(
            restarted.get(&crate::derive::alias_key("task-1")),
            Some(session("s1"))
        );
        assert_eq!(restarted.get("s9"), None);
        // Taking over: the other process still writes, and what it writes
        // after this start is found all the same, before and after it is
        // gone.
        let taking_over = sessions(&store, false);
        first.put("s2", session("s2"));
        store.flush().unwrap();
        assert_eq!(taking_over.get("s2"), Some(session("s2")));
        first.put("s3", session("s3"));
        store.flush().unwrap();
        taking_over.now_alone();
        assert_eq!(taking_over.get("s3"), Some(session("s3")));
        assert_eq!(taking_over.get("s9"), None);
        // Its own writes, before and after, are found by a later start.
        taking_over.put("s4", session("s4"));
        store.flush().unwrap();
        assert_eq!(sessions(&store, true).get("s4"), Some(session("s4")));
    }
}
