//! `GET /v1/event-webhooks/{key}/history`: a webhook's attempts by
//! outcome and their latency (p50, p99) per hour for the last 7 days
//! ([`crate::history`]): this process's counts, or with JetStream every
//! instance's, as each last shared them (every 5 s).

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
    let (hours, instances) = match &shared.jetstream {
        Some(js) => {
            let parts: Vec<_> = super::deliveries::internal(js.history_of(&key).await)?
                .iter()
                .filter_map(|json| serde_json::from_slice(json).ok())
                .collect();
            (crate::history::view(&parts, now_ms()), parts.len())
        }
        None => (shared.history.view(&key, now_ms()), 1),
    };
    let total: u64 = hours.iter().map(|h| h.attempts).sum();
    Ok(Json(json!({
        "webhook_key": key,
        "hours": hours,
        "attempts": total,
        "instances": instances,
    }))
    .into_response())
}
