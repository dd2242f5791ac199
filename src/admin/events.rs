//! `GET /v1/embeds/{embed_id}/events`: a session's events, oldest first,
//! as OneSchema's events API lists them, `limit` at a time with an
//! opaque `cursor`. Events are deleted after `events_retention`. The
//! session's `embed_jwt` is shown masked: it is a credential, and the
//! receivers got it already.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::{page_limit, ApiError};
use crate::app::Shared;

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
    let limit = page_limit(page.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let from = match page.cursor.as_deref() {
        None => 0,
        Some(c) => decode_cursor(c).ok_or_else(|| {
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
        "next_cursor": next.map(encode_cursor),
        "has_next_page": next.is_some(),
    }))
    .into_response())
}

/// The envelope with its JWT masked (`null` stays `null`).
fn masked(mut event: crate::event::Event) -> crate::event::Event {
    if !event.embed_jwt.is_null() {
        event.embed_jwt = serde_json::Value::String(crate::secret::MASK.into());
    }
    event
}

fn encode_cursor(seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("seq:{seq}"))
}

fn decode_cursor(cursor: &str) -> Option<u64> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("seq:")?
        .parse()
        .ok()
}
