//! `GET /v1/search?q=`: one box for anything an operator holds: a
//! delivery id, an event UUID, a session key, a webhook key, or
//! `field=value` in event data (`filename=contacts.csv`, a dotted path
//! for nested fields). Answers with the matching sessions, events,
//! deliveries and webhooks. Events are looked for among the newest
//! [`SCAN`] events of the embedded store's log; with the JetStream store,
//! events are not searched (by session key, delivery id or webhook key
//! they are found).

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
use crate::funnel::Progress;
use crate::store::sqlite::DeliveryInfo;

/// Events looked through at most, newest first.
pub const SCAN: usize = 200_000;
/// Results of each kind at most.
const LIMIT: usize = 50;

#[derive(Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
}

/// What `q` may be.
struct Asked {
    text: String,
    /// `field=value`, with a field name that can be a JSON path.
    field: Option<(String, String)>,
}

fn asked(q: &str) -> Asked {
    let text = q.trim().to_string();
    let field = text.split_once('=').and_then(|(f, v)| {
        let f = f.trim();
        let plain = !f.is_empty()
            && f.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            });
        plain.then(|| (quoted_path(f), v.trim().to_string()))
    });
    Asked { text, field }
}

/// `a.b` as the JSON path `"a"."b"` (each name quoted).
fn quoted_path(field: &str) -> String {
    field
        .split('.')
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(".")
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
    let mut events = Vec::new();
    let mut note = None;
    match &shared.jetstream {
        Some(_) => {
            note = Some("with the jetstream store, events are not searched: search a session key, a delivery id or a webhook key");
        }
        None => {
            let (uuid, field) = match &asked.field {
                Some((f, v)) => (None, Some((f.clone(), v.clone()))),
                None => (Some(asked.text.clone()), None),
            };
            let found = on_store(&shared, move |store| {
                store.find_events(
                    uuid.as_deref(),
                    field.as_ref().map(|(f, v)| (f.as_str(), v.as_str())),
                    SCAN,
                    LIMIT,
                )
            })
            .await?;
            let mut uuids: Vec<String> = found
                .iter()
                .filter_map(|(_, _, e)| {
                    serde_json::from_str::<Value>(e).ok()?["uuid"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect();
            // A delivery of an event the log does not hold (a test event,
            // or one past the log's scan) is found by its UUID too.
            if asked.field.is_none() && !uuids.contains(&asked.text) {
                uuids.push(asked.text.clone());
            }
            for (session_key, at, event) in found {
                let Ok(event) = serde_json::from_str::<crate::event::Event>(&event) else {
                    continue;
                };
                // As the events API shows it: the embed JWT masked.
                let event = super::events::masked(event);
                events.push(json!({"session_key": session_key, "logged_at": at, "event": event}));
                if !sessions
                    .iter()
                    .any(|s| s["session_key"] == json!(session_key))
                {
                    sessions.extend(session(&shared, &session_key).await?);
                }
            }
            {
                let webhooks: Vec<String> = shared
                    .rules
                    .load()
                    .webhooks
                    .iter()
                    .map(|w| w.key.clone())
                    .collect();
                let mut of_events = on_store(&shared, move |store| {
                    store.deliveries_of(&webhooks, &uuids, LIMIT)
                })
                .await?;
                shown(&shared, &mut of_events);
                for d in of_events {
                    if !deliveries.iter().any(|e: &DeliveryInfo| e.id == d.id) {
                        deliveries.push(d);
                    }
                }
            }
        }
    }
    sessions.truncate(LIMIT);
    Ok(Json(json!({
        "q": asked.text,
        "sessions": sessions,
        "events": events,
        "deliveries": deliveries,
        "webhooks": webhooks,
        "note": note,
    }))
    .into_response())
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
    let mut found = match &shared.jetstream {
        Some(js) => internal(js.delivery(id).await)?.map(|(d, _)| d),
        None => on_store(shared, move |store| store.delivery(id))
            .await?
            .map(|(d, _, _)| d),
    };
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
            Some(("\"filename\"".into(), "contacts.csv".into()))
        );
        let a = asked("meta.sheet = Q1");
        assert_eq!(a.field, Some(("\"meta\".\"sheet\"".into(), "Q1".into())));
        // Not a field name: searched as text.
        assert_eq!(asked("a b=c").field, None);
        assert_eq!(asked("=c").field, None);
        assert_eq!(asked("event-1234").field, None);
    }
}
