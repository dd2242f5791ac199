//! The outbox through the admin API:
//! `GET /v1/deliveries?state=pending|failed|dead|delivered&webhook=&session=&limit=&cursor=`,
//! `GET /v1/deliveries/{id}` (with every attempt), `POST /v1/deliveries/{id}/retry`,
//! `POST /v1/deliveries/replay` (`{"webhook", "since", "include_delivered"}`),
//! and `POST /v1/event-webhooks/{key}/enable` for a webhook that was
//! disabled (410) or paused.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{page_limit, parse_json, ApiError, JsonBody};
use crate::app::Shared;
use crate::deliver::formats;
use crate::store::sqlite::{
    DeliveryInfo, Filter, State as DeliveryState, Store, StoreError, StoredEvent, WebhookChange,
};

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
        "failed" => Filter::Failed,
        "dead" => Filter::State(DeliveryState::Dead),
        "delivered" => Filter::State(DeliveryState::Delivered),
        other => {
            return Err(bad(
                "invalid_state",
                format!("unknown state `{other}` (pending, failed, dead, delivered)"),
            ))
        }
    };
    let limit = page_limit(q.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = match q.cursor.as_deref() {
        None => 0,
        Some(c) => decode_cursor(c)
            .ok_or_else(|| bad("invalid_cursor", "cursor is not one this API returned"))?,
    };
    let mut rows = listed(&shared, filter, q.webhook, q.session, after, limit + 1).await?;
    let has_next = rows.len() > limit;
    rows.truncate(limit);
    let next = has_next
        .then(|| rows.last().map(|r| encode_cursor(r.id)))
        .flatten();
    Ok(
        Json(json!({"deliveries": rows, "next_cursor": next, "has_next_page": has_next}))
            .into_response(),
    )
}

/// Up to `limit` deliveries matching `filter`, `webhook` and `session`
/// after `after`, from whichever store there is.
pub(super) async fn listed(
    shared: &Shared,
    filter: Filter,
    webhook: Option<String>,
    session: Option<String>,
    after: i64,
    limit: usize,
) -> Result<Vec<DeliveryInfo>, ApiError> {
    match &shared.jetstream {
        Some(js) => internal(
            js.list_deliveries(filter, webhook.as_deref(), session.as_deref(), after, limit)
                .await,
        ),
        None => {
            on_store(shared, move |store| {
                store.list_deliveries(filter, webhook.as_deref(), session.as_deref(), after, limit)
            })
            .await
        }
    }
}

pub async fn show(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let (delivery, attempts, event) = match &shared.jetstream {
        Some(js) => {
            let (delivery, event) =
                internal(js.delivery(id).await)?.ok_or_else(|| not_found(id))?;
            (delivery, Vec::new(), Some(event))
        }
        None => on_store(&shared, move |store| store.delivery(id))
            .await?
            .ok_or_else(|| not_found(id))?,
    };
    let payload = event.map(|e| payload(&shared, &delivery.webhook, &e));
    Ok(
        Json(json!({"delivery": delivery, "attempts": attempts, "payload": payload}))
            .into_response(),
    )
}

/// What the delivery sends, part by part, as its webhook's format makes
/// it now: each body (JSON when it is JSON), with the session's embed JWT
/// masked wherever it appears. Without the webhook (deleted), the event.
fn payload(shared: &Shared, webhook: &str, event: &StoredEvent) -> Value {
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
    let found = match &shared.jetstream {
        Some(_) if id >= 0 => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_dead",
                format!("delivery {id} is pending (on its way); with the jetstream store only dead letters (negative ids) are sent again"),
            ))
        }
        Some(js) => internal(js.requeue(id).await)?,
        None => on_store(&shared, move |store| store.requeue(id)).await?,
    };
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
    let since = match &body.since {
        None | Some(Value::Null) => 0,
        Some(v) => parse_since(v).ok_or_else(|| {
            bad(
                "invalid_since",
                "since is an RFC 3339 time, seconds since the epoch, or a duration ago like `2h`",
            )
        })?,
    };
    let n = match &shared.jetstream {
        Some(_) if body.include_delivered => {
            return Err(bad(
                "unsupported",
                "include_delivered needs the embedded store: the JetStream work queue does not keep delivered deliveries",
            ))
        }
        Some(js) => internal(js.replay(&body.webhook, since).await)?,
        None => {
            on_store(&shared, move |store| {
                store.replay(&body.webhook, since, body.include_delivered)
            })
            .await?
        }
    };
    Ok(Json(json!({"requeued": n})).into_response())
}

pub async fn enable(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    super::webhooks::require(&shared, &key)?;
    match &shared.jetstream {
        Some(js) => {
            internal(
                js.change_webhook(&key, |s| {
                    let was = s.clone();
                    *s = Default::default();
                    *s != was
                })
                .await,
            )?;
        }
        None => internal(shared.store.webhook_change(&key, WebhookChange::Enable))?,
    }
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
pub(super) fn internal<T>(result: Result<T, StoreError>) -> Result<T, ApiError> {
    result.map_err(|e| ApiError::internal(e.to_string()))
}

/// Runs `call` on the embedded store off the async workers.
pub(super) async fn on_store<T: Send + 'static>(
    shared: &Shared,
    call: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = shared.store.clone();
    let done = tokio::task::spawn_blocking(move || call(&store))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    internal(done)
}

fn not_found(id: i64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no delivery {id}"),
    )
}

fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("id:{id}"))
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("id:")?
        .parse()
        .ok()
}
