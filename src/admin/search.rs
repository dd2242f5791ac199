//! `GET /v1/search?q=`: one box for anything an operator holds: a
//! delivery id, an event UUID, a session key, a webhook key, or
//! `field=value` in event data (`filename=contacts.csv`, a dotted path
//! for nested fields). Answers with the matching sessions, events,
//! deliveries and webhooks. Events are looked for among the newest
//! events of the store's log ([`crate::store::EventSearch`]); their
//! deliveries are looked up by webhook and UUID (embedded), or among
//! their sessions' (JetStream).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::deliveries::{internal, on_store, shown};
use super::ApiError;
use crate::app::Shared;
use crate::event::Event;
use crate::funnel::Progress;
use crate::store::sqlite::DeliveryInfo;
use crate::store::EventQuery;

/// Results of each kind at most.
const LIMIT: usize = 50;
/// Sessions whose deliveries are read (JetStream) at most.
const SESSIONS_READ: usize = 10;

#[derive(Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
}

/// What `q` may be: an event UUID (or anything else in one box), or
/// `field=value` in event data.
fn asked(q: &str) -> EventQuery {
    let text = q.trim().to_string();
    let field = text.split_once('=').and_then(|(f, v)| {
        let path: Vec<String> = f.trim().split('.').map(str::to_string).collect();
        let plain = path.iter().all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        });
        plain.then(|| (path, v.trim().to_string()))
    });
    EventQuery { text, field }
}

pub async fn search(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<SearchQuery>,
) -> Result<Response, ApiError> {
    let asked = asked(q.q.as_deref().unwrap_or(""));
    if asked.text.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "q is required: a delivery id, an event UUID, a session key, a webhook key, or field=value",
        ));
    }
    let webhooks = webhooks(&shared, &asked.text);
    let mut sessions = session(&shared, &asked.text).await?;
    let mut deliveries = Vec::new();
    if let Ok(id) = asked.text.parse::<i64>() {
        deliveries.extend(delivery(&shared, id).await?);
    }
    let found = find_events(&shared, &asked).await?;
    let mut uuids: Vec<String> = found.iter().map(|(_, _, e)| e.uuid.clone()).collect();
    // A delivery of an event the log does not hold (a test event, or one
    // past the scan) is found by its UUID too.
    if asked.field.is_none() && !uuids.contains(&asked.text) {
        uuids.push(asked.text.clone());
    }
    let of_sessions: BTreeSet<String> = found.iter().map(|(s, _, _)| s.clone()).collect();
    let mut events = Vec::new();
    for (session_key, at, event) in found {
        // As the events API shows it: the embed JWT masked.
        let event = super::events::masked(event);
        events.push(json!({"session_key": session_key, "logged_at": at, "event": event}));
    }
    for key in &of_sessions {
        if !sessions.iter().any(|s| s["session_key"] == json!(key)) {
            sessions.extend(session(&shared, key).await?);
        }
    }
    for d in deliveries_of(&shared, &uuids, &of_sessions).await? {
        if !deliveries.iter().any(|e: &DeliveryInfo| e.id == d.id) {
            deliveries.push(d);
        }
    }
    sessions.truncate(LIMIT);
    deliveries.truncate(LIMIT);
    Ok(Json(json!({
        "q": asked.text,
        "sessions": sessions,
        "events": events,
        "deliveries": deliveries,
        "webhooks": webhooks,
    }))
    .into_response())
}

/// The events asked for, newest first: `(session, logged at, event)`.
async fn find_events(
    shared: &Shared,
    asked: &EventQuery,
) -> Result<Vec<(String, i64, Event)>, ApiError> {
    internal(shared.event_search.find(asked.clone(), LIMIT).await)
}

/// The deliveries of the events `uuids`: by webhook and UUID in the
/// embedded store; among their sessions' deliveries with JetStream.
async fn deliveries_of(
    shared: &Shared,
    uuids: &[String],
    sessions: &BTreeSet<String>,
) -> Result<Vec<DeliveryInfo>, ApiError> {
    let webhooks: Vec<String> = shared.rules.load().webhook_keys();
    let sessions = sessions.iter().take(SESSIONS_READ).cloned().collect();
    let mut found = internal(
        shared
            .deliveries
            .of_events(webhooks, uuids.to_vec(), sessions, LIMIT)
            .await,
    )?;
    shown(shared, &mut found);
    Ok(found)
}

/// Webhooks whose key is `q` or contains it.
fn webhooks(shared: &Shared, q: &str) -> Vec<Value> {
    let lower = q.to_lowercase();
    shared
        .rules
        .load()
        .webhooks
        .iter()
        .filter(|w| w.key.to_lowercase().contains(&lower))
        .take(LIMIT)
        .map(|w| json!({"webhook_key": w.key, "exact": w.key == q}))
        .collect()
}

/// The session whose key is `key`, as the sessions API shows it.
async fn session(shared: &Shared, key: &str) -> Result<Vec<Value>, ApiError> {
    let k = key.to_string();
    let progress = on_store(shared, move |store| store.get_progress(&k)).await?;
    Ok(progress
        .and_then(|json| serde_json::from_str::<Progress>(&json).ok())
        .map(|p| super::sessions::view(key, &p))
        .into_iter()
        .collect())
}

/// Delivery `id`, shown.
async fn delivery(shared: &Shared, id: i64) -> Result<Vec<DeliveryInfo>, ApiError> {
    let mut found = internal(shared.deliveries.get(id).await)?.map(|(d, _, _)| d);
    if let Some(d) = &mut found {
        shown(shared, std::slice::from_mut(d));
    }
    Ok(found.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_queries_are_recognised() {
        let a = asked(" filename=contacts.csv ");
        assert_eq!(
            a.field,
            Some((vec!["filename".to_string()], "contacts.csv".to_string()))
        );
        assert_eq!(EventQuery::json_path(&a.field.unwrap().0), "\"filename\"");
        let a = asked("meta.sheet = Q1");
        assert_eq!(
            EventQuery::json_path(&a.field.as_ref().unwrap().0),
            "\"meta\".\"sheet\""
        );
        // Not a field name: searched as text.
        assert!(asked("a b=c").field.is_none());
        assert!(asked("=c").field.is_none());
        assert!(asked("event-1234").field.is_none());
        assert!(asked("a.\"b=c").field.is_none());
    }

    #[test]
    fn events_match_by_uuid_or_by_a_data_field() {
        let event: Event = serde_json::from_value(json!({
            "uuid": "u-1", "embed_id": 1, "embed_jwt": null, "environment_name": "P",
            "template_key": null, "event_type": "file_uploaded", "trigger_type": "user",
            "data": {"filename": "c.csv", "rows": 3, "meta": {"sheet": "Q1"}}, "created_at": 1.0
        }))
        .unwrap();
        assert!(asked("u-1").matches(&event));
        assert!(!asked("u-2").matches(&event));
        assert!(asked("filename=c.csv").matches(&event));
        assert!(asked("rows=3").matches(&event));
        assert!(asked("meta.sheet=Q1").matches(&event));
        assert!(!asked("meta=Q1").matches(&event));
        assert!(!asked("filename=d.csv").matches(&event));
    }
}
