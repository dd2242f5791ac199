//! Webhook management, OneSchema's shape: `GET|POST /v1/event-webhooks`,
//! `GET|PUT|DELETE /v1/event-webhooks/{key}` with `webhook_key`, `url`,
//! `events`, `secret_key`, `description` (and any other webhook rule key),
//! renamed through `new_webhook_key`.
//!
//! Each webhook the API creates lives in its own file,
//! `<rules_dir>/event-webhooks/<key>.json`. A change is planned, checked
//! against the whole directory, written atomically and applied, all under
//! one lock. Webhooks defined anywhere else are read-only here.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{change, parse_json, ApiError, JsonBody};
use crate::app::Shared;
use crate::rules::model::{Assignment, EventSelector, Webhook};
use crate::rules::write::{self, Change};
use crate::rules::Rules;
use crate::store::webhooks::Shown;

/// What the API shows of a webhook: the secret masked, the URL without
/// credentials or query.
fn view(w: &Webhook, rules_dir: &FsPath, shared: &Shared) -> Value {
    let Shown { disabled, paused } = shared.webhook_states.shown(&w.key);
    let events: Vec<String> = match &w.events {
        EventSelector::All => vec!["*".into()],
        EventSelector::Some(s) => s.iter().cloned().collect(),
    };
    json!({
        "webhook_key": w.key,
        "url": crate::secret::redact_url(&w.url),
        "events": events,
        "secret_key": w.secret.as_ref().map(|_| crate::secret::MASK),
        "description": w.description,
        "format": w.format.name(),
        "assignment": if w.assignment == Assignment::Session { "session" } else { "all" },
        "filter": w.filter.as_ref().map(|f| f.source().clone()),
        "signed": !w.signing.is_empty(),
        "managed_by_api": write::is_managed(rules_dir, &w.key, &w.origin.file),
        "defined_at": w.origin.to_string(),
        "disabled": disabled,
        "paused": paused,
        "rate_limit": w.rate_limit.map(rate_limit_view),
        "effective_rate_limit": crate::deliver::limit::limit_of(w, shared.config.delivery.rate_limit).map(rate_limit_view),
        "ordering": w.ordering.name(),
    })
}

fn rate_limit_view(limit: crate::rules::model::RateLimit) -> Value {
    json!({"per_second": limit.per_second, "burst": limit.burst})
}

pub async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let rules = shared.rules.load();
    let hooks: Vec<Value> = rules
        .webhooks
        .iter()
        .map(|w| view(w, &shared.config.rules_dir, &shared))
        .collect();
    Json(json!({"event_webhooks": hooks})).into_response()
}

pub async fn show(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let rules = shared.rules.load();
    let w = rules.webhook(&key).ok_or_else(|| not_found(&key))?;
    Ok(Json(view(w, &shared.config.rules_dir, &shared)).into_response())
}

pub async fn create(
    State(shared): State<Arc<Shared>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let raw = to_rules_keys(parse_json(&body)?)?;
    let key = raw
        .get("key")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_field",
                "`webhook_key` is required",
            )
        })?;
    check_key(&key)?;
    let shown = key.clone();
    let rules = change(&shared, move |rules, dir| {
        if rules.webhook(&key).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "exists",
                format!("webhook `{key}` exists"),
            ));
        }
        Ok(vec![Change::Write(
            write::webhook_path(dir, &key),
            file_text(&escaped(raw)),
        )])
    })
    .await
    .map_err(|e| e.renamed_fields(API_NAMES))?;
    // A new webhook starts clean, even if an old one had its key.
    if let Err(e) = shared.webhook_states.enable(&shown).await {
        tracing::error!(webhook = %shown, error = %e, "webhook state not reset");
    }
    shown_as(&rules, &shown, &shared, StatusCode::CREATED)
}

pub async fn update(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let mut patch = to_rules_keys(parse_json(&body)?)?;
    let new_key = match patch.remove("new_webhook_key") {
        None | Some(Value::Null) => key.clone(),
        Some(Value::String(new)) => new,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "`new_webhook_key` must be a string",
            ))
        }
    };
    if patch
        .get("key")
        .is_some_and(|k| k.as_str() != Some(key.as_str()))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "rename a webhook with `new_webhook_key`",
        ));
    }
    check_key(&new_key)?;
    let shown = new_key.clone();
    let old_key = key.clone();
    let rules = change(&shared, move |rules, dir| {
        let (path, mut raw) = managed(rules, dir, &key)?;
        for (k, v) in escaped(patch) {
            if v.is_null() {
                raw.remove(&k);
            } else {
                raw.insert(k, v);
            }
        }
        raw.insert("key".into(), Value::String(new_key.clone()));
        let new_path = write::webhook_path(dir, &new_key);
        let mut changes = vec![Change::Write(new_path.clone(), file_text(&raw))];
        if new_key != key {
            if rules.webhook(&new_key).is_some() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "exists",
                    format!("webhook `{new_key}` exists"),
                ));
            }
            // The new file first: a failure in between leaves two webhooks, never none.
            changes.push(Change::Remove(path));
        }
        Ok(changes)
    })
    .await
    .map_err(|e| e.renamed_fields(API_NAMES))?;
    if shown != old_key {
        // The backlog and the delivery state follow the new key.
        shared
            .webhook_states
            .clone()
            .rename(&old_key, &shown, settle_time(&shared))
            .await;
    }
    shown_as(&rules, &shown, &shared, StatusCode::OK)
}

pub async fn delete(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let deleted = key.clone();
    change(&shared, move |rules, dir| {
        let (path, _) = managed(rules, dir, &key)?;
        Ok(vec![Change::Remove(path)])
    })
    .await?;
    // What was still waiting for it becomes dead letters (replayable).
    shared
        .webhook_states
        .clone()
        .delete(&deleted, settle_time(&shared))
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// How long attempts in flight may still take (the longest timeout plus
/// the ack margin): after it, nothing more lands under a changed key.
fn settle_time(shared: &Shared) -> Duration {
    let longest = shared
        .rules
        .load()
        .webhooks
        .iter()
        .filter_map(|w| w.timeout)
        .max()
        .unwrap_or_default()
        .max(shared.config.delivery.timeout);
    longest + Duration::from_secs(5)
}

/// A 404 unless the current rules have webhook `key`.
pub(super) fn require(shared: &Shared, key: &str) -> Result<(), ApiError> {
    match shared.rules.load().webhook(key) {
        Some(_) => Ok(()),
        None => Err(not_found(key)),
    }
}

fn not_found(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no webhook `{key}`"),
    )
}

fn shown_as(
    rules: &Rules,
    key: &str,
    shared: &Shared,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let w = rules.webhook(key).ok_or_else(|| not_found(key))?;
    Ok((status, Json(view(w, &shared.config.rules_dir, shared))).into_response())
}

/// The rules' names of the API's fields that differ: (rules, API).
const API_NAMES: &[(&str, &str)] = &[("key", "webhook_key"), ("secret", "secret_key")];

/// The API's names to the rules' names: `webhook_key` is `key`,
/// `secret_key` is `secret`.
fn to_rules_keys(body: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for (k, v) in body {
        let name = API_NAMES
            .iter()
            .find(|(_, api)| *api == k)
            .map_or(k.as_str(), |(rules, _)| rules);
        if out.insert(name.to_string(), v).is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                format!("`{name}` is given twice"),
            ));
        }
    }
    Ok(out)
}

/// Values from the API are literal: `${` must not read as a variable.
fn escaped(raw: Map<String, Value>) -> Map<String, Value> {
    raw.into_iter()
        .map(|(k, v)| (k, write::escape_env(&v)))
        .collect()
}

/// Keys become file names: letters, digits, `_`, `-` and `.`.
fn check_key(key: &str) -> Result<(), ApiError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && !key.starts_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            "a webhook key has 1 to 128 letters, digits, `_`, `-` or `.`",
        ))
    }
}

/// The file of a webhook the API manages and its object as written there
/// (`${...}` left as written), or why it cannot be changed here.
fn managed(
    rules: &Rules,
    dir: &FsPath,
    key: &str,
) -> Result<(std::path::PathBuf, Map<String, Value>), ApiError> {
    let w = rules.webhook(key).ok_or_else(|| not_found(key))?;
    let not_managed = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_managed",
            format!(
                "webhook `{key}` is defined in {}; change it in that file",
                w.origin
            ),
        )
    };
    if !write::is_managed(dir, key, &w.origin.file) {
        return Err(not_managed());
    }
    let text = std::fs::read_to_string(&w.origin.file)
        .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", w.origin.file.display())))?;
    let doc: Value = serde_json::from_str(&text).map_err(|_| not_managed())?;
    match doc
        .get("webhooks")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([Value::Object(raw)]) if raw.get("key").and_then(Value::as_str) == Some(key) => {
            Ok((w.origin.file.clone(), raw.clone()))
        }
        _ => Err(not_managed()),
    }
}

fn file_text(raw: &Map<String, Value>) -> String {
    serde_json::to_string_pretty(&json!({"webhooks": [raw]})).unwrap_or_default() + "\n"
}
