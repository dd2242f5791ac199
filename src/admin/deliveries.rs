//! The outbox through the admin API:
//! `GET /v1/deliveries?state=pending|held|failed|dead|delivered&webhook=&session=&limit=&cursor=`,
//! `GET /v1/deliveries/{id}` (with every attempt in full),
//! `GET /v1/deliveries/{id}/payload?part=`, `POST /v1/deliveries/{id}/retry`,
//! `POST /v1/deliveries/retry` (bulk: `{"webhook", "state", "session",
//! "since", "dry_run"}`), `POST /v1/deliveries/replay` (`{"webhook",
//! "since", "include_delivered"}`), and `POST /v1/event-webhooks/{key}/enable`
//! for a webhook that was disabled (410) or paused.
//!
//! A pending delivery of a disabled webhook is shown `held`, with the
//! reason and no next attempt: nothing goes out until it is enabled.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{page_limit, parse_json, ApiError, JsonBody};
use crate::app::Shared;
use crate::deliver::formats;
use crate::store::sqlite::{
    DeliveryInfo, Filter, Retry, State as DeliveryState, Store, StoreError,
};
use crate::store::Embedded;
use crate::store::StoredEvent;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    webhook: Option<String>,
    session: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

pub async fn list(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let filter = match q.state.as_deref().unwrap_or("pending") {
        "pending" => Filter::State(DeliveryState::Pending),
        "held" => Filter::Held,
        "failed" => Filter::Failed,
        "dead" => Filter::State(DeliveryState::Dead),
        "delivered" => Filter::State(DeliveryState::Delivered),
        other => {
            return Err(bad(
                "invalid_state",
                format!("unknown state `{other}` (pending, held, failed, dead, delivered)"),
            ))
        }
    };
    let limit = page_limit(q.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = match q.cursor.as_deref() {
        None => 0,
        Some(c) => super::decode_cursor::<i64>("id", c)
            .ok_or_else(|| bad("invalid_cursor", "cursor is not one this API returned"))?,
    };
    let mut rows = listed(&shared, filter, q.webhook, q.session, after, limit + 1).await?;
    let has_next = rows.len() > limit;
    rows.truncate(limit);
    let next = has_next
        .then(|| rows.last().map(|r| super::encode_cursor("id", r.id)))
        .flatten();
    Ok(
        Json(json!({"deliveries": rows, "next_cursor": next, "has_next_page": has_next}))
            .into_response(),
    )
}

/// Up to `limit` deliveries matching `filter`, `webhook` and `session`
/// after `after`, from whichever store there is, as shown ([`shown`]).
pub(super) async fn listed(
    shared: &Shared,
    filter: Filter,
    webhook: Option<String>,
    session: Option<String>,
    after: i64,
    limit: usize,
) -> Result<Vec<DeliveryInfo>, ApiError> {
    let mut rows = internal(
        shared
            .deliveries
            .list(filter, webhook, session, after, limit)
            .await,
    )?;
    shown(shared, &mut rows);
    if filter == Filter::Held {
        rows.retain(|r| r.state == "held");
    }
    Ok(rows)
}

/// Pending deliveries of a disabled webhook are `held`: the reason, and
/// no next attempt (nothing goes out until the webhook is enabled).
pub(super) fn shown(shared: &Shared, rows: &mut [DeliveryInfo]) {
    let mut disabled: std::collections::HashMap<String, Option<String>> = Default::default();
    for row in rows.iter_mut().filter(|r| r.state == "pending") {
        let reason = disabled
            .entry(row.webhook.clone())
            .or_insert_with(|| disabled_reason(shared, &row.webhook))
            .clone();
        if let Some(reason) = reason {
            row.state = "held".into();
            row.held_reason = Some(format!(
                "webhook `{0}` is disabled ({reason}); nothing is sent until it is enabled (POST /v1/event-webhooks/{0}/enable)",
                row.webhook
            ));
            row.next_attempt_at = None;
        }
    }
}

/// Why `webhook` is disabled, if it is.
fn disabled_reason(shared: &Shared, webhook: &str) -> Option<String> {
    shared.webhook_states.shown(webhook).disabled
}

pub async fn show(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let (mut delivery, mut attempts, event) =
        internal(shared.deliveries.get(id).await)?.ok_or_else(|| not_found(id))?;
    delivery.attempts = delivery.attempts.max(attempts.len() as u32);
    shown(&shared, std::slice::from_mut(&mut delivery));
    for a in &mut attempts {
        if let Some(request) = &mut a.request {
            request.payload_url = Some(format!("/v1/deliveries/{id}/payload?part={}", a.part));
        }
    }
    let payload = event.map(|e| payload(&shared, &delivery.webhook, &e));
    Ok(
        Json(json!({"delivery": delivery, "attempts": attempts, "payload": payload}))
            .into_response(),
    )
}

/// What the delivery sends, part by part, as its webhook's format makes
/// it now: each body (JSON when it is JSON), with the session's embed JWT
/// masked wherever it appears. Without the webhook (deleted), the event.
pub(super) fn payload(shared: &Shared, webhook: &str, event: &StoredEvent) -> Value {
    let jwt = event.event.embed_jwt.as_str().filter(|j| !j.is_empty());
    let bodies: Vec<Value> = match shared.rules.load().webhook(webhook) {
        Some(w) => formats::requests(w, &event.derived())
            .iter()
            .map(|r| {
                serde_json::from_slice(&r.body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into()))
            })
            .collect(),
        None => vec![serde_json::to_value(&event.event).unwrap_or_default()],
    };
    let mut shown = Value::Array(bodies);
    if let Some(jwt) = jwt {
        mask(&mut shown, jwt);
    }
    shown
}

/// Every occurrence of `secret` in the strings of `value`, masked.
fn mask(value: &mut Value, secret: &str) {
    match value {
        Value::String(s) if s.contains(secret) => *s = s.replace(secret, crate::secret::MASK),
        Value::Array(items) => items.iter_mut().for_each(|v| mask(v, secret)),
        Value::Object(m) => m.values_mut().for_each(|v| mask(v, secret)),
        _ => {}
    }
}

pub async fn retry(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let found = internal(shared.deliveries.requeue(id).await)?;
    if !found {
        return Err(not_found(id));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "state": "pending"})),
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct PartQuery {
    part: Option<usize>,
}

/// `GET /v1/deliveries/{id}/payload?part=`: the body one part sends, as
/// its webhook's format makes it now (the session's embed JWT masked).
pub async fn payload_part(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<i64>,
    Query(q): Query<PartQuery>,
) -> Result<Response, ApiError> {
    let (delivery, _, event) =
        internal(shared.deliveries.get(id).await)?.ok_or_else(|| not_found(id))?;
    let event = event.ok_or_else(|| ApiError::internal("the stored event is unreadable"))?;
    let part = q.part.unwrap_or(0);
    let Value::Array(mut bodies) = payload(&shared, &delivery.webhook, &event) else {
        return Err(ApiError::internal("no payload"));
    };
    if part >= bodies.len() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "delivery {id} has {} part(s); there is no part {part}",
                bodies.len()
            ),
        ));
    }
    Ok(Json(bodies.swap_remove(part)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    #[serde(default)]
    webhook: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    since: Option<Value>,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/deliveries/retry`: sends again every delivery of `state`
/// (`dead` by default, `failed` or `delivered`), of `webhook` and
/// `session` when given, created since `since`; `{"requeued": n}`, or
/// with `dry_run` `{"would_requeue": n}` and nothing changed.
pub async fn retry_matching(
    State(shared): State<Arc<Shared>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let body: RetryBody = parse_json(&body)?;
    let (state, failed) = match body.state.as_deref().unwrap_or("dead") {
        "dead" => (DeliveryState::Dead, false),
        "failed" => (DeliveryState::Pending, true),
        "delivered" => (DeliveryState::Delivered, false),
        other => {
            return Err(bad(
                "invalid_state",
                format!("cannot retry `{other}` deliveries (dead, failed, delivered)"),
            ))
        }
    };
    let since = since_ms(body.since.as_ref())?;
    if let Some(w) = &body.webhook {
        super::webhooks::require(&shared, w)?;
    }
    let retry = Retry {
        state,
        failed,
        webhooks: shared.rules.load().webhook_keys(),
        webhook: body.webhook.clone(),
        session: body.session.clone(),
        since,
    };
    let n = internal(match body.dry_run {
        true => shared.deliveries.count_matching(retry).await,
        false => shared.deliveries.retry_matching(retry).await,
    })?;
    let filter = json!({
        "webhook": body.webhook, "state": body.state.as_deref().unwrap_or("dead"),
        "session": body.session, "since": since, "dry_run": body.dry_run,
    });
    let answer = if body.dry_run {
        json!({"would_requeue": n})
    } else {
        tracing::info!(count = n, "deliveries sent again through the admin API");
        json!({"requeued": n})
    };
    let mut response = Json(answer.clone()).into_response();
    response.extensions_mut().insert(super::audit::Detail(
        json!({"filter": filter, "result": answer}),
    ));
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    webhook: String,
    #[serde(default)]
    since: Option<Value>,
    #[serde(default)]
    include_delivered: bool,
}

pub async fn replay(
    State(shared): State<Arc<Shared>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let body: ReplayBody = parse_json(&body)?;
    let since = since_ms(body.since.as_ref())?;
    let n = internal(
        shared
            .deliveries
            .replay(body.webhook, since, body.include_delivered)
            .await,
    )?;
    Ok(Json(json!({"requeued": n})).into_response())
}

pub async fn enable(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    super::webhooks::require(&shared, &key)?;
    internal(shared.webhook_states.enable(&key).await)?;
    shared
        .metrics
        .webhook_disabled
        .with_label_values(&[&key])
        .set(0);
    shared
        .metrics
        .webhook_paused
        .with_label_values(&[&key])
        .set(0);
    tracing::info!(webhook = %key, "webhook enabled through the admin API");
    Ok(Json(json!({"webhook_key": key, "disabled": null, "paused": false})).into_response())
}

/// A body's `since` in ms (absent or null: the beginning), or a 400.
fn since_ms(since: Option<&Value>) -> Result<i64, ApiError> {
    match since {
        None | Some(Value::Null) => Ok(0),
        Some(v) => parse_since(v).ok_or_else(|| {
            bad(
                "invalid_since",
                "since is an RFC 3339 time, seconds since the epoch, or a duration ago like `2h`",
            )
        }),
    }
}

/// A point in time in ms: RFC 3339, seconds since the epoch, or a
/// duration before now (`2h`).
pub fn parse_since(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_f64().map(|s| (s * 1000.0) as i64),
        Value::String(s) => parse_since_text(s),
        _ => None,
    }
}

pub fn parse_since_text(s: &str) -> Option<i64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as i64);
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Some((secs * 1000.0) as i64);
    }
    let ago = humantime::parse_duration(s).ok()?;
    Some(crate::store::sqlite::now_ms() - ago.as_millis() as i64)
}

/// A store's failure as the API's 500.
/// A store's answer as the API's: what the store does not do is a 400,
/// what it refuses now a 409, anything else a 500.
pub(super) fn internal<T>(result: Result<T, StoreError>) -> Result<T, ApiError> {
    result.map_err(|e| match e {
        StoreError::Unsupported(message) => bad("unsupported", message),
        StoreError::Conflict { code, message } => {
            ApiError::new(StatusCode::CONFLICT, code, message)
        }
        e => ApiError::internal(e.to_string()),
    })
}

/// Runs `call` on the embedded store off the async workers.
pub(super) async fn on_store<T: Send + 'static>(
    shared: &Shared,
    call: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    internal(Embedded(shared.store.clone()).run(call).await)
}

fn not_found(id: i64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no delivery {id}"),
    )
}
