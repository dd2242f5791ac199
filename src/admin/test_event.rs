//! `POST /v1/event-webhooks/{key}/test` with `{"event_type"}`: a sample
//! event of that type, sent to that webhook only, through its real format,
//! signing and retry policy, like any delivery. It is marked as a test:
//! `"test": true` on the delivery in the API and the console, and the
//! `Taphook-Test: 1` header on every request it makes. Its session is
//! `taphook-test`, its data a small sample (`"test": true`, a file name,
//! a row count).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{parse_json, ApiError, JsonBody};
use crate::app::Shared;
use crate::event::Event;
use crate::rules::model::EventSelector;
use crate::store::sqlite::now_ms;
use crate::store::StoredEvent;

/// The session key a test event carries.
pub const TEST_SESSION: &str = "taphook-test";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestBody {
    event_type: String,
}

pub async fn send(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let body: TestBody = parse_json(&body)?;
    let rules = shared.rules.load();
    let webhook = rules.webhook(&key).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no webhook `{key}`"),
        )
    })?;
    let event_type = body.event_type.trim().to_string();
    if event_type.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_event_type",
            "event_type must be a non-empty string",
        ));
    }
    if let EventSelector::Some(types) = &webhook.events {
        if !types.contains(&event_type) {
            let listed: Vec<&str> = types.iter().map(String::as_str).collect();
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_event_type",
                format!(
                    "webhook `{key}` does not take `{event_type}` events (it takes: {})",
                    listed.join(", ")
                ),
            ));
        }
    }
    let event = sample(&shared, &event_type);
    let uuid = event.uuid.clone();
    let stored = Arc::new(StoredEvent {
        trace: None,
        event: event.clone(),
        session: None,
        registered: None,
        request_id: None,
        test: true,
    });
    shared.outbox.enqueue(&key, stored).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    let delivery_id =
        super::deliveries::internal(shared.deliveries.id_of(key.clone(), uuid.clone()).await)?;
    tracing::info!(webhook = %key, %event_type, "test event sent through the admin API");
    let answer = json!({
        "test": true,
        "webhook_key": key,
        "event": event,
        "delivery_id": delivery_id,
    });
    let mut response = (StatusCode::ACCEPTED, Json(answer)).into_response();
    response.extensions_mut().insert(super::audit::Detail(
        json!({"event_type": event_type, "event_uuid": uuid, "delivery_id": delivery_id}),
    ));
    Ok(response)
}

/// A sample event of `event_type`.
fn sample(shared: &Shared, event_type: &str) -> Event {
    Event {
        uuid: format!("test-{}", uuid::Uuid::new_v4()),
        embed_id: json!(TEST_SESSION),
        embed_jwt: serde_json::Value::Null,
        environment_name: shared.config.environment_name.clone(),
        template_key: json!("taphook-test"),
        event_type: event_type.to_string(),
        trigger_type: "api".into(),
        data: json!({
            "test": true,
            "filename": "taphook-test.csv",
            "row_count": 3,
            "sheet_name": "Sheet1",
        }),
        created_at: now_ms() as f64 / 1000.0,
    }
}
