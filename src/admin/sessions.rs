//! Importer sessions and what became of them, for the console and any
//! other client: `GET /v1/sessions?q=&limit=&cursor=` (most recent event
//! first, searched by session key or `template_key`),
//! `GET /v1/sessions/{key}` (its stage in the funnel), and
//! `GET /v1/sessions/{key}/deliveries` (every delivery of its events).
//! The overview (`GET /v1/overview`) and a webhook's numbers
//! (`GET /v1/event-webhooks/{key}/stats`) come from the same data.
//!
//! Sessions are read from the funnel's progress, which this instance keeps
//! in its data directory (with the JetStream store: the sessions whose
//! traffic went through this instance).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::deliveries::{internal, listed, on_store};
use super::{page_limit, ApiError};
use crate::app::Shared;
use crate::funnel::{Progress, Stage};
use crate::store::sqlite::{now_ms, Filter, State as DeliveryState};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
/// A session's deliveries listed at most.
const MAX_DELIVERIES: usize = 1000;

#[derive(Deserialize)]
pub struct ListQuery {
    q: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// What the API shows of a session's progress.
pub(super) fn view(key: &str, progress: &Progress) -> Value {
    let reached: serde_json::Map<String, Value> = progress
        .reached
        .iter()
        .map(|(stage, at)| (stage.name().to_string(), json!(at)))
        .collect();
    json!({
        "session_key": key,
        "template_key": progress.template_key,
        "stage": progress.stage().map(Stage::name),
        "reached": reached,
        "last_event_at": progress.last_event_at,
        "last_event_type": progress.last_event_type,
        "finished": progress.finished,
        "stalled": progress.stalled,
    })
}

pub async fn list(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let before = match query.cursor.as_deref() {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "cursor is not one this API returned",
            )
        })?),
    };
    let search = query.q.filter(|q| !q.is_empty());
    let mut rows = on_store(&shared, move |store| {
        let before = before.as_ref().map(|(at, key)| (*at, key.as_str()));
        store.recent_sessions(search.as_deref(), before, limit + 1)
    })
    .await?;
    let has_next = rows.len() > limit;
    rows.truncate(limit);
    let sessions: Vec<(String, Progress)> = rows
        .into_iter()
        .filter_map(|(key, json)| Some((key, serde_json::from_str(&json).ok()?)))
        .collect();
    let next = has_next
        .then(|| sessions.last())
        .flatten()
        .map(|(key, p)| encode_cursor(p.last_event_at, key));
    let shown: Vec<Value> = sessions.iter().map(|(k, p)| view(k, p)).collect();
    Ok(
        Json(json!({"sessions": shown, "next_cursor": next, "has_next_page": has_next}))
            .into_response(),
    )
}

/// `?key=`: a session key in the query, where no browser rewrites it (a
/// key `.` or `..` in a path is collapsed away as a dot segment, `%2e`
/// too; `/`, `?` and `#` would end the segment).
#[derive(Deserialize)]
pub struct KeyQuery {
    key: String,
}

pub async fn show(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    show_key(shared, key).await
}

/// `GET /v1/session?key=`: [`show`], for any key.
pub async fn show_by_query(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, ApiError> {
    show_key(shared, q.key).await
}

async fn show_key(shared: Arc<Shared>, key: String) -> Result<Response, ApiError> {
    let progress = {
        let key = key.clone();
        on_store(&shared, move |store| store.get_progress(&key)).await?
    };
    let progress: Progress = progress
        .and_then(|json| serde_json::from_str(&json).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such session (unknown, or past the retention)",
            )
        })?;
    let mut shown = view(&key, &progress);
    // The key as the session's first event typed it (`42` or `"42"`).
    let session = {
        let (shared, key) = (shared.clone(), key.clone());
        tokio::task::spawn_blocking(move || shared.sessions.get(&key))
            .await
            .ok()
            .flatten()
    };
    let embed_id = session.map_or(Value::String(key), |s| s.key);
    shown["embed_id"] = embed_id;
    Ok(Json(json!({ "session": shown })).into_response())
}

pub async fn deliveries(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    deliveries_of(&shared, key).await
}

/// `GET /v1/session/deliveries?key=`: [`deliveries`], for any key.
pub async fn deliveries_by_query(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, ApiError> {
    deliveries_of(&shared, q.key).await
}

async fn deliveries_of(shared: &Arc<Shared>, key: String) -> Result<Response, ApiError> {
    let limit = MAX_DELIVERIES;
    let mut rows = listed(shared, Filter::Any, None, Some(key), 0, limit + 1).await?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    Ok(Json(json!({"deliveries": rows, "truncated": truncated})).into_response())
}

/// `GET /v1/overview`: events accepted and delivery attempts per minute
/// over the last hour (this process's own count), and the funnel per
/// `template_key` (sessions that reached each stage, and stalled ones).
pub async fn overview(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let now = now_ms();
    let minutes = shared.metrics.activity.minutes(now);
    let names: Vec<&'static str> = Stage::ALL.iter().map(|s| s.name()).collect();
    let rows = on_store(&shared, move |store| store.funnel_counts(&names)).await?;
    let funnel: Vec<Value> = rows
        .into_iter()
        .map(|(template_key, counts, stalled)| {
            let stages: serde_json::Map<String, Value> = Stage::ALL
                .iter()
                .zip(counts)
                .map(|(s, n)| (s.name().to_string(), json!(n)))
                .collect();
            json!({"template_key": template_key, "stages": stages, "stalled": stalled})
        })
        .collect();
    Ok(Json(json!({
        "now": now,
        "minutes": minutes,
        "stages": Stage::ALL.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "funnel": funnel,
    }))
    .into_response())
}

/// `GET /v1/event-webhooks/{key}/stats`: its pending and dead
/// deliveries, and its attempts in the last hour with their success rate.
pub async fn webhook_stats(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    super::webhooks::require(&shared, &key)?;
    let counts = internal(shared.deliveries.counts(key.clone()).await)?;
    let count = |state: DeliveryState| {
        counts
            .iter()
            .find(|(w, s, _)| *w == key && s == state.name())
            .map_or(0, |(_, _, n)| *n)
    };
    let (succeeded, failed) = shared.metrics.activity.webhook_attempts(&key, now_ms());
    let total = succeeded + failed;
    Ok(Json(json!({
        "webhook_key": key,
        "pending": count(DeliveryState::Pending),
        "dead": count(DeliveryState::Dead),
        "last_hour": {
            "attempts": total,
            "succeeded": succeeded,
            "failed": failed,
            "success_rate": (total > 0).then(|| succeeded as f64 / total as f64),
        },
    }))
    .into_response())
}

fn encode_cursor(at: i64, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("at:{at}:{key}"))
}

fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (at, key) = text.strip_prefix("at:")?.split_once(':')?;
    Some((at.parse().ok()?, key.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cursors_round_trip_with_colons_in_keys() {
        let c = super::encode_cursor(1_700_000_000_000, "a:b:c");
        assert_eq!(
            super::decode_cursor(&c),
            Some((1_700_000_000_000, "a:b:c".into()))
        );
        assert_eq!(super::decode_cursor("nope"), None);
    }
}
