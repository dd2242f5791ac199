//! The event envelope (OneSchema's), whatever format it is delivered in.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One lifecycle event, as receivers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub uuid: String,
    pub embed_id: Value,
    pub embed_jwt: Value,
    pub environment_name: String,
    pub template_key: Value,
    pub event_type: String,
    pub trigger_type: String,
    pub data: Value,
    pub created_at: f64,
}

impl Event {
    /// The document filters see: the envelope, with `eventtype` as an
    /// alias of `event_type` (OS1 writes `$eventtype`).
    pub fn filter_document(&self) -> Value {
        let mut doc = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut doc {
            m.insert("eventtype".into(), Value::String(self.event_type.clone()));
        }
        doc
    }
}

/// An event with what the pipeline knows beside the envelope.
#[derive(Debug, Clone)]
pub struct DerivedEvent {
    pub event: Event,
    /// The session's remembered fields (`webhook_keys`, ...), if any.
    pub session: Option<Map<String, Value>>,
    /// When the exchange that produced it completed, for latency metrics.
    pub derived_at: std::time::Instant,
    /// For a delivery through a registered event (OS1): its name, topic,
    /// app and filled-in `get_api_path`.
    pub registered: Option<Value>,
    /// The id of the request the event was derived from, for logs.
    pub request_id: Option<String>,
    /// The event's session was not in the store before it (derive found
    /// none): nothing kept about it needs reading back.
    pub new_session: bool,
    /// Derive's span for the exchange (traces on): the event's span is its
    /// child.
    pub trace: Option<crate::telemetry::Parent>,
}

impl DerivedEvent {
    /// The session's `webhook_keys`, as OneSchema's `eventWebhookKeys`.
    pub fn webhook_keys(&self) -> impl Iterator<Item = &str> {
        self.session
            .as_ref()
            .and_then(|s| s.get("webhook_keys"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
    }
}
