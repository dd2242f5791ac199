//! Dromo: managed webhooks (`{"event", "data": {...}}`) and basic webhooks
//! (a form body `uploadId=<id>`). Fields come from the event's data, then
//! its session; what neither has takes Dromo's defaults.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::HeaderValue;
use serde_json::{json, Map, Value};

use super::{field, json_request, Outgoing};
use crate::event::DerivedEvent;

/// Keys of a headless import never sent in a webhook.
const HIDDEN_HEADLESS_KEYS: &[&str] = &["review_url", "original_file_download"];
const USER_KEYS: &[&str] = &["id", "name", "email", "company_id", "company_name"];

/// The import's id: `data.id`, else the session key, as a string.
fn import_id(event: &DerivedEvent) -> String {
    match field(event, "id").unwrap_or(&event.event.embed_id) {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Whether the event's session runs in development mode.
pub fn development_mode(event: &DerivedEvent) -> bool {
    field(event, "development_mode").is_some_and(truthy)
}

/// The event's import identifier, if any.
pub fn import_identifier(event: &DerivedEvent) -> Option<&str> {
    field(event, "import_identifier").and_then(Value::as_str)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty() && s != "false",
        _ => true,
    }
}

/// Dromo's numbers are numbers: a numeric string (read from a path or a
/// form) is converted.
fn as_number(v: &Value) -> Value {
    match v {
        Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or(Value::Null),
        Value::Number(_) => v.clone(),
        _ => Value::Null,
    }
}

fn user(event: &DerivedEvent) -> Value {
    let given = field(event, "user").and_then(Value::as_object);
    let user: Map<String, Value> = USER_KEYS
        .iter()
        .map(|k| {
            (
                k.to_string(),
                given
                    .and_then(|u| u.get(*k))
                    .cloned()
                    .unwrap_or(Value::Null),
            )
        })
        .collect();
    Value::Object(user)
}

fn created_date(event: &DerivedEvent) -> Value {
    if let Some(v @ Value::String(_)) = field(event, "created_date") {
        return v.clone();
    }
    let at = UNIX_EPOCH + Duration::try_from_secs_f64(event.event.created_at).unwrap_or_default();
    Value::String(humantime::format_rfc3339_micros(at).to_string())
}

fn headless(event: &DerivedEvent) -> Option<Value> {
    let mut h = field(event, "headless")?.clone();
    if let Value::Object(m) = &mut h {
        for key in HIDDEN_HEADLESS_KEYS {
            m.remove(*key);
        }
    }
    Some(h)
}

/// A managed webhook's body.
pub fn managed(event: &DerivedEvent) -> Outgoing {
    let headless = headless(event);
    let import_type = match field(event, "import_type").and_then(Value::as_str) {
        Some(t) => t.to_ascii_uppercase(),
        None if headless.is_some() => "HEADLESS".into(),
        None => "EMBEDDED".into(),
    };
    let mut data = json!({
        "id": import_id(event),
        "filename": field(event, "filename").cloned().unwrap_or(Value::Null),
        "user": user(event),
        "created_date": created_date(event),
        "import_type": import_type,
        "status": field(event, "status").cloned().unwrap_or_else(|| json!("SUCCESSFUL")),
        "num_data_rows": field(event, "num_data_rows").map(as_number).unwrap_or(Value::Null),
        "development_mode": development_mode(event),
        "has_data": field(event, "has_data").is_some_and(truthy),
    });
    if let (Some(h), Value::Object(m)) = (headless, &mut data) {
        if import_type == "HEADLESS" {
            m.insert("headless".into(), h);
        }
    }
    json_request(
        event.event.uuid.clone(),
        &json!({"event": event.event.event_type, "data": data}),
    )
}

/// A basic webhook's body: `uploadId=<id>`, form-encoded.
pub fn basic(event: &DerivedEvent) -> Outgoing {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("uploadId", &import_id(event))
        .finish();
    Outgoing {
        id: event.event.uuid.clone(),
        body: Bytes::from(body),
        headers: vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        )],
    }
}
