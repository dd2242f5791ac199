//! `GET /v1/catalog/asyncapi.json` and
//! `GET /v1/catalog/schemas/{format}/{event_type}.json`: the event catalog
//! of the rules in force ([`crate::catalog`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::app::Shared;
use crate::catalog::{Catalog, Shape};

/// The AsyncAPI 3.0 document of the webhooks.
pub async fn asyncapi(State(shared): State<Arc<Shared>>) -> Response {
    let rules = shared.rules.load();
    json(&Catalog::new(&rules).asyncapi())
}

/// One event type's schema in one format (`standard-webhooks`: the
/// signature headers).
pub async fn schema(
    State(shared): State<Arc<Shared>>,
    Path((format, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let Some(shape) = Shape::parse(&format) else {
        let known: Vec<&str> = Shape::ALL.iter().map(|s| s.name()).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_format",
            format!("no format `{format}`: one of {}", known.join(", ")),
        ));
    };
    let event_type = file.strip_suffix(".json").unwrap_or(&file);
    let rules = shared.rules.load();
    match Catalog::new(&rules).schema(shape, event_type) {
        Some(schema) => Ok(json(&schema)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_event_type",
            format!("no route derives `{event_type}`"),
        )),
    }
}

fn json(value: &serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(value).unwrap_or_default(),
    )
        .into_response()
}
