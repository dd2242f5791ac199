//! The audit trail: every state-changing call to the `/v1` API, allowed
//! or refused, with the token's name (never the token), its role, the
//! action (method and route), its target (the path called, and what the
//! handler adds: a filter, a count), the outcome and the time. Kept like
//! events (`events_retention`): in the embedded store, or with JetStream
//! on a stream every instance writes to; listed newest first at
//! `GET /v1/audit?limit=&cursor=`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::access::Caller;
use super::{page_limit, ApiError};
use crate::app::Shared;

/// A refusal: the role the call needed.
#[derive(Debug, Clone, Copy)]
pub struct Denied(pub &'static str);

/// What a handler adds to its call's audit entry (a filter, a count).
#[derive(Debug, Clone)]
pub struct Detail(pub Value);

/// An error response's code and message, for the entry's outcome.
#[derive(Debug, Clone)]
pub struct Failed(pub &'static str, pub String);

/// How long a call waits for its audit entry to be stored.
const AUDIT_WRITE: std::time::Duration = std::time::Duration::from_secs(5);

/// The entry of a state-changing call, from its answer.
pub fn entry(
    caller: &Caller,
    method: &Method,
    route: &str,
    target: &str,
    response: &Response,
) -> Value {
    let status = response.status();
    let extensions = response.extensions();
    let outcome = if let Some(Denied(needed)) = extensions.get::<Denied>() {
        json!({"status": status.as_u16(), "result": "forbidden", "needed_role": needed})
    } else if let Some(Failed(code, message)) = extensions.get::<Failed>() {
        json!({"status": status.as_u16(), "result": "error", "code": code, "message": message})
    } else {
        json!({"status": status.as_u16(), "result": if status.is_success() { "ok" } else { "error" }})
    };
    let mut entry = json!({
        "at": crate::store::sqlite::now_ms(),
        "token_name": caller.name,
        "role": caller.role.name(),
        "action": format!("{method} {route}"),
        "target": target,
        "outcome": outcome,
    });
    if let Some(Detail(detail)) = extensions.get::<Detail>() {
        entry["detail"] = detail.clone();
    }
    entry
}

/// Writes an entry before the call answers: whoever reads the trail after
/// a call sees it there. A lost entry is logged (the call itself has
/// happened).
pub async fn record(shared: &Shared, entry: Value) {
    let written = shared.audit.append(entry.to_string());
    let failed = match tokio::time::timeout(AUDIT_WRITE, written).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("not stored within {AUDIT_WRITE:?}"),
    };
    tracing::error!(error = %failed, action = %entry["action"], token = %entry["token_name"], "audit entry not stored");
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/audit`: entries newest first, a page at a time.
pub async fn list(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit.as_deref(), 50, 500)?;
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(super::decode_cursor::<i64>("seq", c).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "cursor is not one this API returned",
            )
        })?),
    };
    let mut rows = super::deliveries::internal(shared.audit.page(before, limit + 1).await)?;
    let has_next = rows.len() > limit;
    rows.truncate(limit);
    let next = has_next
        .then(|| {
            rows.last()
                .map(|(seq, _)| super::encode_cursor("seq", *seq))
        })
        .flatten();
    let entries: Vec<Value> = rows
        .into_iter()
        .filter_map(|(seq, entry)| {
            let mut v: Value = serde_json::from_str(&entry).ok()?;
            v["id"] = json!(seq);
            Some(v)
        })
        .collect();
    Ok(
        Json(json!({"entries": entries, "next_cursor": next, "has_next_page": has_next}))
            .into_response(),
    )
}
