//! Webhook management, OneSchema's shape: `GET|POST /v1/event-webhooks`,
//! `GET|PUT|DELETE /v1/event-webhooks/{key}` with `webhook_key`, `url`,
//! `events`, `secret_key`, `description` (and any other webhook rule key),
//! renamed through `new_webhook_key`.
//!
//! Each webhook the API creates lives in its own file,
//! `<rules_dir>/event-webhooks/<key>.json`. A change is checked against
//! the whole directory, written atomically, and applied at once. Webhooks
//! defined by hand in other files are read-only here.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{parse_json, ApiError};
use crate::app::Shared;
use crate::rules::model::{Assignment, EventSelector, Webhook};
use crate::rules::source::{process_env, Document};
use crate::rules::write::{self, Change, WriteError};
use crate::rules::Rules;

/// What the API shows of a webhook; the secret is masked.
fn view(w: &Webhook, rules_dir: &std::path::Path) -> Value {
    let events: Vec<String> = match &w.events {
        EventSelector::All => vec!["*".into()],
        EventSelector::Some(s) => s.iter().cloned().collect(),
    };
    json!({
        "webhook_key": w.key,
        "url": w.url.as_str(),
        "events": events,
        "secret_key": w.secret.as_ref().map(|_| "********"),
        "description": w.description,
        "format": w.format.name(),
        "assignment": if w.assignment == Assignment::Session { "session" } else { "all" },
        "filter": w.filter.as_ref().map(|f| f.source().clone()),
        "signed": !w.signing.is_empty(),
        "managed_by_api": write::is_managed(rules_dir, &w.origin.file),
        "defined_at": w.origin.to_string(),
    })
}

pub async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let rules = shared.rules.load();
    let hooks: Vec<Value> = rules
        .webhooks
        .iter()
        .map(|w| view(w, &shared.config.rules_dir))
        .collect();
    Json(json!({"event_webhooks": hooks})).into_response()
}

pub async fn show(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let rules = shared.rules.load();
    let w = rules.webhook(&key).ok_or_else(|| not_found(&key))?;
    Ok(Json(view(w, &shared.config.rules_dir)).into_response())
}

pub async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
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
    if shared.rules.load().webhook(&key).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!("webhook `{key}` exists"),
        ));
    }
    let change = Change::Write(
        write::webhook_path(&shared.config.rules_dir, &key),
        file_text(&raw),
    );
    let rules = commit(&shared, vec![change]).await?;
    shown(&rules, &key, &shared, StatusCode::CREATED)
}

pub async fn update(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut patch = to_rules_keys(parse_json(&body)?)?;
    let path = managed_file(&shared, &key)?;
    let mut raw = read_managed(&path)?;
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
    for (k, v) in patch {
        if v.is_null() {
            raw.remove(&k);
        } else {
            raw.insert(k, v);
        }
    }
    let mut changes = Vec::new();
    if new_key != key {
        check_key(&new_key)?;
        if shared.rules.load().webhook(&new_key).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "exists",
                format!("webhook `{new_key}` exists"),
            ));
        }
        changes.push(Change::Remove(path));
    }
    raw.insert("key".into(), Value::String(new_key.clone()));
    changes.push(Change::Write(
        write::webhook_path(&shared.config.rules_dir, &new_key),
        file_text(&raw),
    ));
    let rules = commit(&shared, changes).await?;
    shown(&rules, &new_key, &shared, StatusCode::OK)
}

pub async fn delete(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let path = managed_file(&shared, &key)?;
    commit(&shared, vec![Change::Remove(path)]).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn not_found(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no webhook `{key}`"),
    )
}

fn shown(
    rules: &Rules,
    key: &str,
    shared: &Shared,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let w = rules.webhook(key).ok_or_else(|| not_found(key))?;
    Ok((status, Json(view(w, &shared.config.rules_dir))).into_response())
}

/// The API's names to the rules' names: `webhook_key` is `key`,
/// `secret_key` is `secret`.
fn to_rules_keys(body: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for (k, v) in body {
        let name = match k.as_str() {
            "webhook_key" => "key",
            "secret_key" => "secret",
            other => other,
        };
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

/// The file of a webhook the API manages, or why it cannot be changed.
fn managed_file(shared: &Shared, key: &str) -> Result<PathBuf, ApiError> {
    let rules = shared.rules.load();
    let w = rules.webhook(key).ok_or_else(|| not_found(key))?;
    if !write::is_managed(&shared.config.rules_dir, &w.origin.file) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_managed",
            format!(
                "webhook `{key}` is defined in {}; change it in that file",
                w.origin
            ),
        ));
    }
    Ok(w.origin.file.clone())
}

/// The webhook object of an API-managed file, with `${...}` resolved as
/// the loader reads it.
fn read_managed(path: &std::path::Path) -> Result<Map<String, Value>, ApiError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", path.display())))?;
    let doc = Document::parse(path, &text, &process_env)
        .map_err(|p| ApiError::internal(p.to_string()))?;
    doc.value
        .get("webhooks")
        .and_then(|w| w.get(0))
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| ApiError::internal(format!("{} does not hold a webhook", path.display())))
}

fn file_text(raw: &Map<String, Value>) -> String {
    let doc = json!({"webhooks": [write::escape_env(&Value::Object(raw.clone()))]});
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// Checks the directory with `changes`, writes them, and switches the
/// running rules to the result.
async fn commit(shared: &Arc<Shared>, changes: Vec<Change>) -> Result<Arc<Rules>, ApiError> {
    let _one_at_a_time = shared.admin_writes.lock().await;
    let dir = shared.config.rules_dir.clone();
    let outcome = tokio::task::spawn_blocking(move || -> Result<Rules, WriteError> {
        let rules = write::validate(&dir, &changes)?;
        write::apply(&changes)?;
        Ok(rules)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the change was interrupted: {e}")))?;
    match outcome {
        Ok(rules) => {
            let rules = Arc::new(rules);
            shared
                .metrics
                .init_known_series(rules.webhooks.iter().map(|w| w.key.as_str()));
            shared.rules.store(rules.clone());
            shared
                .metrics
                .rules_reloads
                .with_label_values(&["success"])
                .inc();
            tracing::info!("rules changed through the admin API");
            Ok(rules)
        }
        Err(WriteError::Invalid(problems)) => {
            let message = problems
                .0
                .iter()
                .map(|p| p.reason.clone())
                .collect::<Vec<_>>()
                .join("; ");
            Err(
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
                    .with_problems(problems.0.iter().map(ToString::to_string).collect()),
            )
        }
        Err(e @ WriteError::Io(_)) => Err(ApiError::internal(e.to_string())),
    }
}
