//! `GET /v1/event-webhooks/{key}/history`: a webhook's attempts by
//! outcome and their latency (p50, p99) per hour for the last 7 days
//! ([`crate::history`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ApiError;
use crate::app::Shared;
use crate::store::sqlite::now_ms;

pub async fn show(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    super::webhooks::require(&shared, &key)?;
    let hours = shared.history.view(&key, now_ms());
    let total: u64 = hours.iter().map(|h| h.attempts).sum();
    Ok(Json(json!({
        "webhook_key": key,
        "hours": hours,
        "attempts": total,
        "scope": if shared.jetstream.is_some() { "instance" } else { "all" },
    }))
    .into_response())
}
