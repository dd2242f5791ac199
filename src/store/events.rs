//! The event log: each session's events, oldest first, kept for
//! `events_retention`, for the events API. One trait, with the embedded
//! store's implementation and JetStream's side by side.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::params;
use serde_json::Value;

use super::jetstream::{read_subject, JetStream, Write, LIST_TIMEOUT};
use super::sqlite::{now_ms, Op, Store, StoreError};
use super::Embedded;
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

impl EventLog for JetStream {
    fn append(&self, session: &str, event: &Event) {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.uuid.as_str());
        let body = Bytes::from(serde_json::to_vec(event).unwrap_or_default());
        let write = Write::Publish {
            subject: self.names.event_subject(session),
            headers,
            body,
            kind: "event",
            trace: None,
        };
        if let Err(e) = self.write(write) {
            tracing::error!(error = %e, "event not logged");
        }
    }

    /// The session's events from stream sequence `from` on.
    fn list(&self, session: &str, from: u64, limit: usize) -> Option<Vec<Logged>> {
        let subject = self.names.event_subject(session);
        let read = async {
            let stream = self.js.get_stream(self.names.events_stream()).await.ok()?;
            let page = read_subject(&stream, &subject, from.max(1), limit, |m| {
                let event = serde_json::from_slice::<Event>(&m.payload).ok()?;
                Some(Logged {
                    seq: m.sequence,
                    event,
                })
            })
            .await;
            Some(page)
        };
        let page = self.block_on_for(read, LIST_TIMEOUT)??;
        if page.is_empty() && from > 0 {
            return self.list(session, 0, 1).map(|_| Vec::new());
        }
        (!page.is_empty()).then_some(page)
    }
}

/// The event log in the embedded store: a row per event, by session and
/// sequence.
impl Store {
    pub fn append_event(&self, session: &str, event: &Event) -> Result<(), StoreError> {
        let at = (event.created_at * 1000.0) as i64;
        self.send(Op::AppendEvent {
            session: session.into(),
            at,
            event: serde_json::to_string(event).unwrap_or_default(),
        })
    }

    /// A session's events with `seq >= from` and `created_at >= cutoff`.
    pub fn events(
        &self,
        session: &str,
        from: u64,
        cutoff: i64,
        limit: usize,
    ) -> Result<Vec<(u64, Event)>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT seq, event FROM events WHERE session = ?1 AND seq >= ?2 AND created_at >= ?3 ORDER BY seq LIMIT ?4",
            )?;
            let rows = st.query_map(params![session, from as i64, cutoff, limit as i64], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, json) = row?;
                if let Ok(e) = serde_json::from_str(&json) {
                    out.push((seq as u64, e));
                }
            }
            Ok(out)
        })
    }

    /// Events of a session among the newest `scan` whose UUID is `uuid`,
    /// or whose data has `path` (a JSON path under `$.data`) equal to
    /// `value`, newest first: `(session, created_at, event)`. (An event
    /// without a session is logged only for its deliveries to refer to.)
    pub fn find_events(
        &self,
        uuid: Option<&str>,
        field: Option<(&str, &str)>,
        scan: usize,
        limit: usize,
    ) -> Result<Vec<(String, i64, String)>, StoreError> {
        let (path, value) = field.map_or((None, None), |(p, v)| {
            (Some(format!("$.data.{p}")), Some(v))
        });
        self.inspect(|c| {
            c.prepare_cached(
                "SELECT session, created_at, event FROM
                   (SELECT session, created_at, event FROM events INDEXED BY events_time ORDER BY created_at DESC LIMIT ?4)
                 WHERE session != ''
                   AND (?1 IS NULL OR json_extract(event, '$.uuid') = ?1)
                   AND (?2 IS NULL OR CAST(json_extract(event, ?2) AS TEXT) = ?3)
                 LIMIT ?5",
            )?
            .query_map(params![uuid, path, value, scan as i64, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect()
        })
    }
}

/// Events looked through at most in the embedded store, newest first.
pub const SCAN: usize = 200_000;
/// Events looked through at most in the JetStream event stream (read in
/// batches through an ephemeral consumer).
pub const SCAN_JETSTREAM: usize = 50_000;

/// What an operator looks for among recent events: its UUID (`text`), or
/// `field=value` in its data.
#[derive(Debug, Clone)]
pub struct EventQuery {
    pub text: String,
    /// The field's path under `data` (each name letters, digits, `_` or
    /// `-`) and the value.
    pub field: Option<(Vec<String>, String)>,
}

impl EventQuery {
    /// Whether `event` is what was asked: its UUID, or its data's field
    /// equal to the value (a number or a boolean as it is written).
    pub fn matches(&self, event: &Event) -> bool {
        match &self.field {
            None => event.uuid == self.text,
            Some((path, value)) => {
                let mut at = &event.data;
                for name in path {
                    match at.get(name) {
                        Some(v) => at = v,
                        None => return false,
                    }
                }
                match at {
                    Value::String(s) => s == value,
                    Value::Number(_) | Value::Bool(_) => {
                        serde_json::from_str::<Value>(value).is_ok_and(|v| v == *at)
                    }
                    _ => false,
                }
            }
        }
    }

    /// The field's path as SQLite's JSON path under `$.data`, each name
    /// quoted.
    pub fn json_path(path: &[String]) -> String {
        path.iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// Looking through the newest events of every session.
#[async_trait]
pub trait EventSearch: Send + Sync {
    /// Up to `limit` events that match `query`, newest first: `(session,
    /// logged at (ms), event)`.
    async fn find(
        &self,
        query: EventQuery,
        limit: usize,
    ) -> Result<Vec<(String, i64, Event)>, StoreError>;
}

/// Through the newest [`SCAN`] rows, matched by SQLite.
#[async_trait]
impl EventSearch for Embedded {
    async fn find(
        &self,
        query: EventQuery,
        limit: usize,
    ) -> Result<Vec<(String, i64, Event)>, StoreError> {
        let (uuid, field) = match query.field {
            Some((path, value)) => (None, Some((EventQuery::json_path(&path), value))),
            None => (Some(query.text), None),
        };
        let rows = self
            .run(move |store| {
                store.find_events(
                    uuid.as_deref(),
                    field.as_ref().map(|(f, v)| (f.as_str(), v.as_str())),
                    SCAN,
                    limit,
                )
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(session, at, json)| {
                Some((session, at, serde_json::from_str(&json).ok()?))
            })
            .collect())
    }
}

/// Through the newest [`SCAN_JETSTREAM`] messages of the event stream.
#[async_trait]
impl EventSearch for JetStream {
    async fn find(
        &self,
        query: EventQuery,
        limit: usize,
    ) -> Result<Vec<(String, i64, Event)>, StoreError> {
        self.find_events(SCAN_JETSTREAM, limit, |e| query.matches(e))
            .await
    }
}
