//! `GET /v1/embeds/{embed_id}/events`: a session's events, oldest first,
//! as OneSchema's events API lists them, `limit` at a time with an
//! opaque `cursor`. Events are deleted after `events_retention`. The
//! session's `embed_jwt` is shown masked: it is a credential, and the
//! receivers got it already.
//!
//! `POST /v1/events`: an event pushed directly, into the same pipeline as
//! derived ones (dedup, event log, funnel, filters, outbox); idempotent by
//! `uuid`; answered once its deliveries are committed.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{page_limit, parse_json, ApiError, JsonBody};
use crate::app::Shared;
use crate::event::{DerivedEvent, Event};
use crate::pipeline::Pushed;
use crate::store::session_key;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Deserialize)]
pub struct Page {
    limit: Option<String>,
    cursor: Option<String>,
}

pub async fn list(
    State(shared): State<Arc<Shared>>,
    Path(embed_id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    list_of(shared, embed_id, page).await
}

/// `GET /v1/session/events?key=&limit=&cursor=`: [`list`] for any key
/// (in the query, where no browser rewrites a `.` or `..`).
#[derive(Deserialize)]
pub struct KeyPage {
    key: String,
    limit: Option<String>,
    cursor: Option<String>,
}

pub async fn list_by_query(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<KeyPage>,
) -> Result<Response, ApiError> {
    let page = Page {
        limit: q.limit,
        cursor: q.cursor,
    };
    list_of(shared, q.key, page).await
}

async fn list_of(shared: Arc<Shared>, embed_id: String, page: Page) -> Result<Response, ApiError> {
    let limit = page_limit(page.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let from = match page.cursor.as_deref() {
        None => 0,
        Some(c) => super::decode_cursor::<u64>("seq", c).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "cursor is not one this API returned",
            )
        })?,
    };
    let mut logged = shared
        .events
        .list(&embed_id, from, limit + 1)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no events for this embed (unknown, or past the retention)",
            )
        })?;
    let next = (logged.len() > limit).then(|| logged.remove(limit).seq);
    let events: Vec<_> = logged.into_iter().map(|l| masked(l.event)).collect();
    Ok(Json(json!({
        "events": events,
        "next_cursor": next.map(|n| super::encode_cursor("seq", n)),
        "has_next_page": next.is_some(),
    }))
    .into_response())
}

/// The envelope with its JWT masked (`null` stays `null`).
pub(super) fn masked(mut event: crate::event::Event) -> crate::event::Event {
    if !event.embed_jwt.is_null() {
        event.embed_jwt = serde_json::Value::String(crate::secret::MASK.into());
    }
    event
}

/// The envelope's fields a pushed event may carry.
const FIELDS: &[&str] = &[
    "uuid",
    "embed_id",
    "embed_jwt",
    "environment_name",
    "template_key",
    "event_type",
    "trigger_type",
    "data",
    "created_at",
];

/// How long a push waits for the pipeline's verdict.
const PUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /v1/events`: 202 with the event's `uuid` when it was accepted,
/// 200 with `duplicate: true` when its UUID was seen before.
pub async fn push(
    State(shared): State<Arc<Shared>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let body: Value = parse_json(&body)?;
    let event = envelope(&shared, body)?;
    let uuid = event.event.uuid.clone();
    let (reply, verdict) = tokio::sync::oneshot::channel();
    let busy = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the pipeline is not taking events now (busy or stopping); try again",
        )
    };
    shared
        .pushed
        .try_send(Pushed { event, reply })
        .map_err(|_| busy())?;
    let first = tokio::time::timeout(PUSH_TIMEOUT, verdict)
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())?;
    // With the embedded store, 202 means committed: the event and its
    // deliveries survive a crash from here on (JetStream: they are on
    // their way to NATS, buffered and retried).
    if first {
        tokio::time::timeout(PUSH_TIMEOUT, shared.outbox.committed())
            .await
            .map_err(|_| busy())?
            .map_err(|e| ApiError::internal(format!("the event was not committed: {e}")))?;
    }
    let status = if first {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"data": {"uuid": uuid, "duplicate": !first}})),
    )
        .into_response())
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", message)
}

/// The pushed body as an event: `event_type` and `embed_id` required;
/// `template_key` and `embed_jwt` from the session when not given; a new
/// `uuid`, `trigger_type` `api`, empty `data`, the configured
/// `environment_name` and now by default.
fn envelope(shared: &Shared, body: Value) -> Result<DerivedEvent, ApiError> {
    let Value::Object(mut fields) = body else {
        return Err(invalid(
            "the body must be a JSON object (an event envelope)",
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(invalid(format!(
            "unknown field `{unknown}` (fields: {})",
            FIELDS.join(", ")
        )));
    }
    let text = |fields: &mut Map<String, Value>, name: &str| -> Result<Option<String>, ApiError> {
        match fields.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(_) => Err(invalid(format!("`{name}` must be a non-empty string"))),
        }
    };
    let event_type =
        text(&mut fields, "event_type")?.ok_or_else(|| invalid("`event_type` is required"))?;
    let embed_id = fields.remove("embed_id").unwrap_or(Value::Null);
    let key = session_key(&embed_id)
        .ok_or_else(|| invalid("`embed_id` is required (a string or a number)"))?;
    let trigger_type = text(&mut fields, "trigger_type")?.unwrap_or_else(|| "api".into());
    if !["user", "api", "automation"].contains(&trigger_type.as_str()) {
        return Err(invalid(
            "`trigger_type` must be `user`, `api` or `automation`",
        ));
    }
    let uuid =
        text(&mut fields, "uuid")?.unwrap_or_else(|| format!("event-{}", uuid::Uuid::new_v4()));
    let environment_name = text(&mut fields, "environment_name")?
        .unwrap_or_else(|| shared.config.environment_name.clone());
    let created_at = match fields.remove("created_at") {
        None | Some(Value::Null) => crate::store::sqlite::now_ms() as f64 / 1000.0,
        Some(v) => v
            .as_f64()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| invalid("`created_at` must be seconds since the epoch"))?,
    };
    let session = shared.sessions.get(&key);
    let mut from_session = |name: &str| match fields.remove(name) {
        Some(v) if !v.is_null() => v,
        _ => session
            .as_ref()
            .and_then(|s| s.fields.get(name))
            .cloned()
            .unwrap_or(Value::Null),
    };
    let template_key = from_session("template_key");
    let embed_jwt = from_session("embed_jwt");
    let data = fields.remove("data").unwrap_or_else(|| json!({}));
    Ok(DerivedEvent {
        event: Event {
            uuid,
            // The session's first event typed its key.
            embed_id: session.as_ref().map_or(embed_id, |s| s.key.clone()),
            embed_jwt,
            environment_name,
            template_key,
            event_type,
            trigger_type,
            data,
            created_at,
        },
        session: session.map(|s| s.fields),
        derived_at: std::time::Instant::now(),
        registered: None,
        request_id: None,
        new_session: false,
        trace: None,
    })
}
