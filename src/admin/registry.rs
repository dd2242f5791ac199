//! The OS1 publisher registry: apps (`POST /v1/apps`, `GET|PUT /v1/apps/{id}`)
//! and registered events per topic (`POST|GET /v1/topics/{topic}/events`,
//! `PUT /v1/topics/{topic}/events/{name}`,
//! `POST /v1/topics/{topic}/events/bulk-delete`), in OS1's shapes
//! (`{"data": ...}`, camelCase fields).
//!
//! Like webhooks, each object the API creates lives in its own file under
//! the rules directory (`apps/<id>.json`, `events/<topic>/<name>.json`);
//! objects written by hand elsewhere are read-only here.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{change, page_limit, parse_json, ApiError, JsonBody};
use crate::app::Shared;
use crate::rules::model::{App, RegisteredEvent};
use crate::rules::write::{escape_env, Change};
use crate::rules::Rules;

const TOPICS: &[&str] = &["participant", "entity", "container"];
/// Events one bulk delete may name at most (OS1's limit).
const MAX_BULK_DELETE: usize = 25;
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn app_path(dir: &FsPath, id: &str) -> PathBuf {
    dir.join("apps").join(format!("{id}.json"))
}

fn event_path(dir: &FsPath, topic: &str, name: &str) -> PathBuf {
    dir.join("events").join(topic).join(format!("{name}.json"))
}

/// Ids and names become file names.
fn check_name(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && !value.starts_with('.')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(bad(
            "invalid_field",
            format!("`{field}` has 1 to 128 letters, digits, `_`, `-`, `.` or `:`"),
        ))
    }
}

fn check_topic(topic: &str) -> Result<(), ApiError> {
    if TOPICS.contains(&topic) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_topic",
            format!("unknown topic `{topic}` (participant, entity or container)"),
        ))
    }
}

fn file(key: &str, object: Map<String, Value>) -> String {
    let object = escape_env(&Value::Object(object));
    serde_json::to_string_pretty(&json!({ key: [object] })).unwrap_or_default() + "\n"
}

fn app_view(a: &App) -> Value {
    json!({"id": a.id, "name": a.name, "permissions": a.permissions})
}

fn event_view(e: &RegisteredEvent) -> Value {
    json!({
        "name": e.name,
        "type": e.kind,
        "appId": e.app,
        "description": e.description,
        "eventType": e.event_type,
        "filterLogic": e.filter_logic,
        "getApiPath": e.get_api_path,
        "topic": e.topic,
    })
}

/// The file of an object the API manages, or why it cannot be changed.
fn managed(
    origin_file: &FsPath,
    expected: &FsPath,
    what: &str,
    origin: &impl std::fmt::Display,
) -> Result<(), ApiError> {
    if origin_file == expected {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_managed",
            format!("{what} is defined in {origin}; change it in that file"),
        ))
    }
}

/// The object of an API-managed file, as written.
fn read_object(path: &FsPath, key: &str) -> Result<Map<String, Value>, ApiError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", path.display())))?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    match doc.get(key).and_then(Value::as_array).map(Vec::as_slice) {
        Some([Value::Object(o)]) => Ok(o.clone()),
        _ => Err(ApiError::internal(format!(
            "{} does not hold one object",
            path.display()
        ))),
    }
}

// Apps.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    permissions: Option<Vec<String>>,
}

pub async fn create_app(
    State(shared): State<Arc<Shared>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let body: AppBody = parse_json(&body)?;
    let id = body
        .id
        .unwrap_or_else(|| format!("app:{}", uuid::Uuid::new_v4()));
    check_name("id", &id)?;
    let permissions = body
        .permissions
        .ok_or_else(|| bad("missing_field", "`permissions` is required"))?;
    let mut raw = Map::new();
    raw.insert("id".into(), json!(id));
    if let Some(name) = body.name {
        raw.insert("name".into(), json!(name));
    }
    raw.insert("permissions".into(), json!(permissions));
    let app_id = id.clone();
    change(&shared, move |rules, dir| {
        if rules.apps.iter().any(|a| a.id == app_id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "exists",
                format!("app `{app_id}` exists"),
            ));
        }
        Ok(vec![Change::Write(
            app_path(dir, &app_id),
            file("apps", raw),
        )])
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({"data": {"id": id}}))).into_response())
}

pub async fn show_app(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rules = shared.rules.load();
    let app = find_app(&rules, &id)?;
    Ok(Json(json!({"data": app_view(app)})).into_response())
}

pub async fn update_app(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let body: AppBody = parse_json(&body)?;
    if body.id.as_ref().is_some_and(|new| *new != id) {
        return Err(bad("invalid_field", "`id` cannot change"));
    }
    let app_id = id.clone();
    let rules = change(&shared, move |rules, dir| {
        let app = find_app(rules, &app_id)?;
        let path = app_path(dir, &app_id);
        managed(
            &app.origin.file,
            &path,
            &format!("app `{app_id}`"),
            &app.origin,
        )?;
        let mut raw = read_object(&path, "apps")?;
        if let Some(name) = body.name {
            raw.insert("name".into(), json!(name));
        }
        if let Some(p) = body.permissions {
            raw.insert("permissions".into(), json!(p));
        }
        Ok(vec![Change::Write(path, file("apps", raw))])
    })
    .await?;
    let app = find_app(&rules, &id)?;
    Ok(Json(json!({"data": app_view(app)})).into_response())
}

fn find_app<'a>(rules: &'a Rules, id: &str) -> Result<&'a App, ApiError> {
    rules
        .apps
        .iter()
        .find(|a| a.id == id)
        .ok_or_else(|| app_not_found(id))
}

fn app_not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no app `{id}`"))
}

// Registered events.

/// One event in OS1's shape.
fn event_object(
    topic: &str,
    app: Option<&str>,
    get_api_path: Option<&str>,
    e: &Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    const KNOWN: &[&str] = &[
        "name",
        "description",
        "eventType",
        "filterLogic",
        "type",
        "appId",
        "getApiPath",
    ];
    if let Some(k) = e.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(
            "invalid_field",
            format!(
                "unknown field `{k}` in an event (expected {})",
                KNOWN.join(", ")
            ),
        ));
    }
    let text = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
    let name = text("name").ok_or_else(|| bad("missing_field", "every event needs `name`"))?;
    check_name("name", &name)?;
    let event_type = text("eventType").ok_or_else(|| {
        bad(
            "missing_field",
            format!("event `{name}`: `eventType` is required"),
        )
    })?;
    let app = text("appId").or(app.map(str::to_string)).ok_or_else(|| {
        bad(
            "missing_field",
            format!("event `{name}`: `appId` is required"),
        )
    })?;
    let mut raw = Map::new();
    raw.insert("app".into(), json!(app));
    raw.insert("topic".into(), json!(topic));
    raw.insert("name".into(), json!(name));
    raw.insert("event_type".into(), json!(event_type));
    for (from, to) in [
        ("description", "description"),
        ("type", "type"),
        ("filterLogic", "filter"),
    ] {
        if let Some(v) = e.get(from).filter(|v| !v.is_null()) {
            raw.insert(to.into(), v.clone());
        }
    }
    if let Some(p) = text("getApiPath").or(get_api_path.map(str::to_string)) {
        raw.insert("get_api_path".into(), json!(p));
    }
    Ok(raw)
}

pub async fn register(
    State(shared): State<Arc<Shared>>,
    Path(topic): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    check_topic(&topic)?;
    let body: Map<String, Value> = parse_json(&body)?;
    let events = body
        .get("events")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| bad("missing_field", "`events` must list at least one event"))?;
    let (app, path) = (
        body.get("appId").and_then(Value::as_str),
        body.get("getApiPath").and_then(Value::as_str),
    );
    let mut raws = Vec::new();
    for e in events {
        let e = e
            .as_object()
            .ok_or_else(|| bad("invalid_field", "every item of `events` is an object"))?;
        raws.push(event_object(&topic, app, path, e)?);
    }
    let names: Vec<String> = raws
        .iter()
        .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    let shown = names.clone();
    change(&shared, move |rules, dir| {
        let mut changes = Vec::new();
        for (name, raw) in names.iter().zip(raws) {
            if rules.registered.iter().any(|r| &r.name == name)
                || changes.iter().any(
                    |c| matches!(c, Change::Write(p, _) if *p == event_path(dir, &topic, name)),
                )
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "exists",
                    format!("event `{name}` is registered already"),
                ));
            }
            changes.push(Change::Write(
                event_path(dir, &topic, name),
                file("events", raw),
            ));
        }
        Ok(changes)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"data": {"events": shown}})),
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct Page {
    limit: Option<String>,
    #[serde(rename = "nextPage")]
    next_page: Option<String>,
}

pub async fn list_events(
    State(shared): State<Arc<Shared>>,
    Path(topic): Path<String>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    check_topic(&topic)?;
    let limit = page_limit(page.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = match page.next_page.as_deref() {
        None => None,
        Some(c) => Some(
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| bad("invalid_cursor", "nextPage is not one this API returned"))?,
        ),
    };
    let rules = shared.rules.load();
    let mut events: Vec<&RegisteredEvent> = rules
        .registered
        .iter()
        .filter(|e| e.topic == topic)
        .collect();
    events.sort_by(|a, b| a.name.cmp(&b.name));
    let rest: Vec<&RegisteredEvent> = events
        .into_iter()
        .filter(|e| after.as_ref().is_none_or(|a| e.name > *a))
        .collect();
    let has_next = rest.len() > limit;
    let page: Vec<Value> = rest.iter().take(limit).map(|e| event_view(e)).collect();
    let next = has_next.then(|| URL_SAFE_NO_PAD.encode(rest[limit - 1].name.as_bytes()));
    Ok(
        Json(
            json!({"data": {"events": page, "meta": {"nextPage": next, "hasNextPage": has_next}}}),
        )
        .into_response(),
    )
}

pub async fn update_event(
    State(shared): State<Arc<Shared>>,
    Path((topic, name)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    check_topic(&topic)?;
    let body: Value = parse_json(&body)?;
    // OS1 sends `{"events": [details]}`; a bare object is taken too.
    let details = match body.get("events") {
        Some(Value::Array(items)) => items
            .first()
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| bad("missing_field", "`events` must hold at least one object"))?,
        Some(_) => return Err(bad("invalid_field", "`events` is a list")),
        None => body
            .as_object()
            .cloned()
            .ok_or_else(|| bad("invalid_field", "the body is an object"))?,
    };
    if details
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| n != name)
    {
        return Err(bad(
            "invalid_field",
            "`name` cannot change; register a new event and delete this one",
        ));
    }
    let event_name = name.clone();
    let shown_topic = topic.clone();
    let rules = change(&shared, move |rules, dir| {
        let event = find_event(rules, &topic, &event_name)?;
        let path = event_path(dir, &topic, &event_name);
        managed(
            &event.origin.file,
            &path,
            &format!("event `{event_name}`"),
            &event.origin,
        )?;
        read_object(&path, "events")?;
        // The event as it is, in OS1's names, with the given details over it.
        let mut merged = event_view(event).as_object().cloned().unwrap_or_default();
        merged.remove("topic");
        merged.retain(|_, v| !v.is_null());
        for (k, v) in &details {
            if v.is_null() {
                merged.remove(k);
            } else {
                merged.insert(k.clone(), v.clone());
            }
        }
        merged.insert("name".into(), json!(event_name));
        let raw = event_object(&topic, Some(&event.app), None, &merged)?;
        Ok(vec![Change::Write(path, file("events", raw))])
    })
    .await?;
    let event = find_event(&rules, &shown_topic, &name)?;
    Ok(Json(json!({"data": event_view(event)})).into_response())
}

fn find_event<'a>(
    rules: &'a Rules,
    topic: &str,
    name: &str,
) -> Result<&'a RegisteredEvent, ApiError> {
    rules
        .registered
        .iter()
        .find(|e| e.topic == topic && e.name == name)
        .ok_or_else(|| event_not_found(name))
}

fn event_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no registered event `{name}` in this topic"),
    )
}

pub async fn bulk_delete(
    State(shared): State<Arc<Shared>>,
    Path(topic): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    check_topic(&topic)?;
    let body: Map<String, Value> = parse_json(&body)?;
    if let Some(action) = body.get("action") {
        if action != "remove" {
            return Err(bad("invalid_field", "`action` can only be `remove`"));
        }
    }
    let names: Vec<String> = body
        .get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing_field", "`events` lists the names to delete"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("invalid_field", "`events` holds event names"))
        })
        .collect::<Result<_, _>>()?;
    if names.is_empty() || names.len() > MAX_BULK_DELETE {
        return Err(bad(
            "too_many_events",
            format!(
                "`events` names 1 to {MAX_BULK_DELETE} events per request, got {}",
                names.len()
            ),
        ));
    }
    let deleted = names.clone();
    change(&shared, move |rules, dir| {
        let mut changes = Vec::new();
        for name in &names {
            let event = find_event(rules, &topic, name)?;
            let path = event_path(dir, &topic, name);
            managed(
                &event.origin.file,
                &path,
                &format!("event `{name}`"),
                &event.origin,
            )?;
            changes.push(Change::Remove(path));
        }
        Ok(changes)
    })
    .await?;
    Ok(Json(json!({"data": {"deleted": deleted}})).into_response())
}
