//! The event catalog, generated from the rules: a JSON Schema (2020-12) of
//! every body taphook delivers, for each event type and each format, and an
//! AsyncAPI 3.0 document of the webhooks (each a channel with its events,
//! format, filter, signature scheme and retry policy). Receivers generate
//! their types from it.
//!
//! Served by the admin API (`/v1/catalog/...`), printed by `taphook
//! catalog`, and checked by `taphook check` (every schema is a valid
//! 2020-12 schema).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::rules::model::{Format, RetryPolicy, StatusRule, Template, Webhook};
use crate::rules::Rules;

/// The dialect of every schema.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The event type the funnel makes itself (`funnel.stall_after`).
const STALLED: &str = "session_stalled";

/// What a schema describes: a format's body, or the Standard Webhooks
/// headers a signed webhook adds to any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Body(Format),
    StandardWebhooks,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Body(Format::OneSchema),
        Shape::Body(Format::Dromo),
        Shape::Body(Format::DromoBasic),
        Shape::Body(Format::Flatfile),
        Shape::StandardWebhooks,
    ];

    /// The name in the catalog's URLs (a format's name as rules write it).
    pub fn name(self) -> &'static str {
        match self {
            Shape::Body(f) => f.name(),
            Shape::StandardWebhooks => "standard-webhooks",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The shape of an event type's `data`, from the routes that derive it.
#[derive(Debug, Clone)]
enum Data {
    /// A route's `data` is one expression: any JSON value.
    Any(Vec<String>),
    /// An object: each key, the expressions that fill it, and whether
    /// every route writes it.
    Object(BTreeMap<String, Field>),
}

#[derive(Debug, Clone)]
struct Field {
    /// `None`: a nested object; else the expressions (as written).
    data: Box<Data>,
    in_every: bool,
}

/// The catalog of one rules directory.
pub struct Catalog<'r> {
    rules: &'r Rules,
    types: BTreeMap<String, Data>,
}

impl<'r> Catalog<'r> {
    pub fn new(rules: &'r Rules) -> Self {
        let mut types: BTreeMap<String, Data> = BTreeMap::new();
        for route in rules.routes.routes() {
            let data = data_of(&route.data);
            types
                .entry(route.event.clone())
                .and_modify(|d| *d = merge(d, &data))
                .or_insert(data);
        }
        Self { rules, types }
    }

    /// Every event type a receiver may get: the routes' and the funnel's.
    pub fn event_types(&self) -> Vec<String> {
        let mut all: Vec<String> = self.types.keys().cloned().collect();
        if !self.types.contains_key(STALLED) {
            all.push(STALLED.to_string());
            all.sort();
        }
        all
    }

    /// The schema of `shape`'s body (or headers) for `event_type`; `None`
    /// when no route derives that type.
    pub fn schema(&self, shape: Shape, event_type: &str) -> Option<Value> {
        let data = self.data_schema(event_type)?;
        let mut schema = match shape {
            Shape::Body(Format::OneSchema) => oneschema(event_type, data),
            Shape::Body(Format::Dromo) => dromo_managed(event_type),
            Shape::Body(Format::DromoBasic) => dromo_basic(),
            Shape::Body(Format::Flatfile) => flatfile(event_type),
            Shape::StandardWebhooks => standard_webhooks(),
        };
        if let Value::Object(m) = &mut schema {
            let mut head = Map::new();
            head.insert("$schema".into(), json!(DIALECT));
            head.insert(
                "$id".into(),
                json!(format!("urn:taphook:catalog:{}:{event_type}", shape.name())),
            );
            head.insert("title".into(), json!(title(shape, event_type)));
            head.extend(std::mem::take(m));
            *m = head;
        }
        Some(schema)
    }

    /// `data`'s schema: what the routes' templates write.
    fn data_schema(&self, event_type: &str) -> Option<Value> {
        if event_type == STALLED && !self.types.contains_key(STALLED) {
            return Some(stalled_data());
        }
        self.types.get(event_type).map(data_schema)
    }

    /// Every schema, checked against the 2020-12 meta-schema; the number
    /// checked, or what is wrong.
    pub fn check(&self) -> Result<usize, Vec<String>> {
        let mut problems = Vec::new();
        let mut n = 0;
        for event_type in self.event_types() {
            for shape in Shape::ALL {
                let Some(schema) = self.schema(shape, &event_type) else {
                    continue;
                };
                n += 1;
                if let Err(e) = jsonschema::meta::validate(&schema) {
                    problems.push(format!("catalog: {}/{event_type}: {e}", shape.name()));
                }
            }
        }
        problems.extend(unresolved(&self.asyncapi()));
        if problems.is_empty() {
            Ok(n)
        } else {
            Err(problems)
        }
    }

    /// The AsyncAPI 3.0 document: each webhook a server, a channel with
    /// its events' messages, and a `send` operation carrying its format,
    /// filter, signature scheme and retry policy.
    pub fn asyncapi(&self) -> Value {
        let mut servers = Map::new();
        let mut channels = Map::new();
        let mut operations = Map::new();
        let event_types = self.event_types();
        for webhook in &self.rules.webhooks {
            let id = ident(&webhook.key);
            servers.insert(id.clone(), server(webhook));
            let mut messages = Map::new();
            for event_type in &event_types {
                if !webhook.events.contains(event_type) {
                    continue;
                }
                if let Some(m) = self.message(webhook, event_type) {
                    messages.insert(ident(event_type), m);
                }
            }
            let refs: Vec<Value> = messages
                .keys()
                .map(|m| json!({"$ref": format!("#/channels/{id}/messages/{m}")}))
                .collect();
            channels.insert(
                id.clone(),
                json!({
                    "address": address(webhook),
                    "title": webhook.key,
                    "description": webhook.description.clone().unwrap_or_else(|| format!("Webhook `{}`", webhook.key)),
                    "servers": [{"$ref": format!("#/servers/{id}")}],
                    "messages": messages,
                }),
            );
            operations.insert(format!("deliver_{id}"), operation(webhook, &id, refs));
        }
        json!({
            "asyncapi": "3.0.0",
            "info": {
                "title": "taphook webhooks",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "The webhooks taphook delivers, generated from its rules directory: each webhook is a server and a channel, each event type it subscribes to a message with the JSON Schema (2020-12) of the body as delivered.",
            },
            "defaultContentType": "application/json",
            "servers": servers,
            "channels": channels,
            "operations": operations,
        })
    }

    /// One event type's message as `webhook` delivers it.
    fn message(&self, webhook: &Webhook, event_type: &str) -> Option<Value> {
        let shape = Shape::Body(webhook.format);
        let mut payload = self.schema(shape, event_type)?;
        if let Value::Object(m) = &mut payload {
            // Inline copies carry no `$id` of their own: one document.
            m.remove("$id");
            m.remove("$schema");
        }
        let content_type = match webhook.format {
            Format::DromoBasic => "application/x-www-form-urlencoded",
            _ => "application/json",
        };
        let mut message = json!({
            "name": event_type,
            "title": title(shape, event_type),
            "contentType": content_type,
            "payload": {
                "schemaFormat": "application/schema+json;version=2020-12",
                "schema": payload,
            },
            "description": format!(
                "The schema alone: `GET /v1/catalog/schemas/{}/{event_type}.json` on taphook's admin listener, or `taphook catalog --out DIR`.",
                shape.name()
            ),
        });
        if !webhook.signing.is_empty() {
            let mut headers = standard_webhooks();
            if let Value::Object(m) = &mut headers {
                m.remove("$schema");
            }
            message["headers"] = json!({
                "schemaFormat": "application/schema+json;version=2020-12",
                "schema": headers,
            });
        }
        Some(message)
    }
}

/// What in the AsyncAPI document does not hold together: a `$ref` that
/// points at nothing, or an operation's message that is not one of its
/// channel's (AsyncAPI 3.0 requires both).
fn unresolved(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    for r in refs {
        match r.strip_prefix('#') {
            Some(pointer) if doc.pointer(pointer).is_some() => {}
            _ => problems.push(format!(
                "catalog: asyncapi.json: `$ref` {r} points at nothing"
            )),
        }
    }
    let operations = doc["operations"].as_object().into_iter().flatten();
    for (name, op) in operations {
        let channel = op["channel"]["$ref"].as_str().unwrap_or_default();
        for m in op["messages"].as_array().into_iter().flatten() {
            let m = m["$ref"].as_str().unwrap_or_default();
            if !m.starts_with(&format!("{channel}/messages/")) {
                problems.push(format!(
                    "catalog: asyncapi.json: operation {name}: message {m} is not one of {channel}'s"
                ));
            }
        }
    }
    problems
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// An id AsyncAPI accepts as a component or map key: `[\w.-]`.
fn ident(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn title(shape: Shape, event_type: &str) -> String {
    let format = match shape {
        Shape::Body(Format::OneSchema) => "OneSchema body",
        Shape::Body(Format::Dromo) => "Dromo managed webhook body",
        Shape::Body(Format::DromoBasic) => "Dromo basic webhook body (form fields)",
        Shape::Body(Format::Flatfile) => "Flatfile body (one request per 1,000 records)",
        Shape::StandardWebhooks => "Standard Webhooks headers",
    };
    format!("{event_type}: {format}")
}

/// Where a webhook is delivered: its host and path, never its userinfo
/// or query (either may hold a token).
fn server(webhook: &Webhook) -> Value {
    let url = &webhook.url;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    };
    // AsyncAPI's protocol names: `tls://` is NATS, `rediss://` Redis.
    let protocol = match crate::deliver::destination::Kind::of(url) {
        crate::deliver::destination::Kind::Nats => "nats",
        crate::deliver::destination::Kind::Redis => "redis",
        _ => url.scheme(),
    };
    let mut server = json!({
        "host": host,
        "protocol": protocol,
        "description": format!("The receiver of webhook `{}`", webhook.key),
    });
    if crate::deliver::destination::Kind::of(url) == crate::deliver::destination::Kind::Http {
        server["pathname"] = json!(url.path());
    }
    if webhook.secret.is_some() {
        server["security"] = json!([{"type": "http", "scheme": "basic", "description": "The webhook's `secret` as the HTTP Basic password, no username"}]);
    }
    server
}

/// Where a webhook's messages go on its server: the HTTP path, or the
/// subject, routing key or stream (placeholders as written).
fn address(webhook: &Webhook) -> String {
    crate::deliver::destination::Destinations::target(&webhook.url)
        .unwrap_or_else(|| webhook.url.path().to_string())
}

/// The `send` operation of a webhook: its format, filter, signature and
/// retries, in the description and in `x-taphook-*` extensions.
fn operation(webhook: &Webhook, id: &str, messages: Vec<Value>) -> Value {
    let mut description = format!(
        "taphook POSTs each event to `{}` in the {} format, at least once",
        webhook.key,
        webhook.format.name()
    );
    if let Some(filter) = &webhook.filter {
        description.push_str(&format!(
            "; only events for which this JSON-logic filter is true: `{}`",
            filter.written()
        ));
    }
    let signature = if webhook.signing.is_empty() {
        Value::Null
    } else {
        description.push_str("; signed with Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`)");
        json!("standard-webhooks")
    };
    description.push('.');
    let mut op = json!({
        "action": "send",
        "channel": {"$ref": format!("#/channels/{id}")},
        "summary": format!("Deliver events to `{}`", webhook.key),
        "description": description,
        "messages": messages,
        "x-taphook-format": webhook.format.name(),
        "x-taphook-retry": retry(&webhook.retry),
        "x-taphook-ordering": format!("{:?}", webhook.ordering).to_lowercase(),
        "x-taphook-destination": crate::deliver::destination::Kind::of(&webhook.url).name(),
    });
    if let Some(filter) = &webhook.filter {
        op["x-taphook-filter"] = filter.written().clone();
    }
    if !signature.is_null() {
        op["x-taphook-signature"] = signature;
    }
    op
}

fn retry(policy: &RetryPolicy) -> Value {
    let statuses: Vec<String> = policy
        .on_status
        .0
        .iter()
        .map(|r| match r {
            StatusRule::Class(c) => format!("{c}xx"),
            StatusRule::Exact(s) => s.to_string(),
        })
        .collect();
    json!({
        "max_retries": policy.max_retries,
        "backoff": policy.backoff.iter().map(|d| humantime::format_duration(*d).to_string()).collect::<Vec<_>>(),
        "on_status": statuses,
        "on_timeout": policy.on_timeout,
        "on_error": policy.on_error,
        "max_retry_after": humantime::format_duration(policy.max_retry_after).to_string(),
        "then": "dead letter (kept, retried or replayed through the admin API)",
    })
}

/// What a route's `data` template writes.
fn data_of(t: &Template) -> Data {
    match t {
        Template::Expr(e) => Data::Any(vec![e.written().to_string()]),
        Template::Object(fields) => Data::Object(
            fields
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Field {
                            data: Box::new(data_of(v)),
                            in_every: true,
                        },
                    )
                })
                .collect(),
        ),
    }
}

/// Two routes deriving one type: keys in either, required when in both.
fn merge(a: &Data, b: &Data) -> Data {
    match (a, b) {
        (Data::Object(x), Data::Object(y)) => {
            let mut out = BTreeMap::new();
            for (k, f) in x {
                match y.get(k) {
                    Some(g) => out.insert(
                        k.clone(),
                        Field {
                            data: Box::new(merge(&f.data, &g.data)),
                            in_every: f.in_every && g.in_every,
                        },
                    ),
                    None => out.insert(
                        k.clone(),
                        Field {
                            data: f.data.clone(),
                            in_every: false,
                        },
                    ),
                };
            }
            for (k, g) in y {
                out.entry(k.clone()).or_insert_with(|| Field {
                    data: g.data.clone(),
                    in_every: false,
                });
            }
            Data::Object(out)
        }
        (Data::Any(x), Data::Any(y)) => Data::Any(x.iter().chain(y).cloned().collect()),
        (Data::Any(x), _) | (_, Data::Any(x)) => Data::Any(x.clone()),
    }
}

fn data_schema(d: &Data) -> Value {
    match d {
        // An expression gives any JSON value; `null` when it fails.
        Data::Any(exprs) => json!({"description": format!("from {}", exprs.join(" or "))}),
        Data::Object(fields) => {
            let properties: Map<String, Value> = fields
                .iter()
                .map(|(k, f)| (k.clone(), data_schema(&f.data)))
                .collect();
            let required: Vec<&String> = fields
                .iter()
                .filter(|(_, f)| f.in_every)
                .map(|(k, _)| k)
                .collect();
            json!({
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false,
            })
        }
    }
}

/// `session_stalled`'s data (the funnel writes it).
fn stalled_data() -> Value {
    json!({
        "type": "object",
        "properties": {
            "stage": {"type": ["string", "null"], "description": "the last funnel stage reached (null: none)"},
            "last_event_type": {"type": ["string", "null"]},
            "last_event_at": {"type": "number", "description": "seconds since the epoch"},
            "idle_seconds": {"type": "integer", "minimum": 0},
        },
        "required": ["stage", "last_event_type", "last_event_at", "idle_seconds"],
        "additionalProperties": false,
    })
}

/// The envelope, as OneSchema sends it.
fn oneschema(event_type: &str, data: Value) -> Value {
    json!({
        "description": "The event envelope (OneSchema's event webhook body). A delivery through an OS1 registered event also carries `registered_event`.",
        "type": "object",
        "properties": {
            "uuid": {"type": "string", "minLength": 1, "description": "the event's UUID: the same on every attempt (dedup on it)"},
            "embed_id": {"description": "the importer session (a number or a string)"},
            "embed_jwt": {"description": "the session's JWT when a route kept it, else null"},
            "environment_name": {"type": "string"},
            "template_key": {"description": "the import template, a string or null"},
            "event_type": {"const": event_type},
            "trigger_type": {"type": "string"},
            "data": data,
            "created_at": {"type": "number", "description": "seconds since the epoch"},
            "registered_event": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "topic": {"type": "string"},
                    "app": {"type": "string"},
                    "get_api_path": {"type": "string"},
                },
            },
        },
        "required": ["uuid", "embed_id", "embed_jwt", "environment_name", "template_key", "event_type", "trigger_type", "data", "created_at"],
        "additionalProperties": false,
    })
}

fn dromo_managed(event_type: &str) -> Value {
    json!({
        "description": "Dromo's managed webhook body: the import's metadata (the rows are fetched from Dromo's API, not sent).",
        "type": "object",
        "properties": {
            "event": {"const": event_type},
            "data": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "filename": {},
                    "user": {
                        "type": "object",
                        "properties": {
                            "id": {}, "name": {}, "email": {}, "company_id": {}, "company_name": {},
                        },
                        "required": ["id", "name", "email", "company_id", "company_name"],
                        "additionalProperties": false,
                    },
                    "created_date": {"type": "string", "description": "RFC 3339"},
                    "import_type": {"type": "string", "description": "EMBEDDED or HEADLESS (upper case)"},
                    "status": {"description": "SUCCESSFUL unless the route says otherwise"},
                    "num_data_rows": {"type": ["number", "null"]},
                    "development_mode": {"type": "boolean"},
                    "has_data": {"type": "boolean"},
                    "headless": {"type": "object", "description": "headless imports only"},
                },
                "required": ["id", "filename", "user", "created_date", "import_type", "status", "num_data_rows", "development_mode", "has_data"],
                "additionalProperties": false,
            },
        },
        "required": ["event", "data"],
        "additionalProperties": false,
    })
}

fn dromo_basic() -> Value {
    json!({
        "description": "Dromo's basic webhook: a form body (application/x-www-form-urlencoded) with one field, described here as the object its fields decode to.",
        "type": "object",
        "properties": {"uploadId": {"type": "string"}},
        "required": ["uploadId"],
        "additionalProperties": false,
    })
}

fn flatfile(event_type: &str) -> Value {
    json!({
        "description": "Flatfile's records body: the event's rows in requests of at most 1,000 records, numbered by `event.sequence`.",
        "type": "object",
        "properties": {
            "event": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "description": "the event's UUID"},
                    "type": {"const": event_type},
                    "sequence": {
                        "type": "object",
                        "properties": {
                            "count": {"type": "integer", "minimum": 1},
                            "index": {"type": "integer", "minimum": 1},
                        },
                        "required": ["count", "index"],
                        "additionalProperties": false,
                    },
                },
                "required": ["id", "type", "sequence"],
                "additionalProperties": false,
            },
            "data": {
                "type": "object",
                "properties": {
                    "meta": {
                        "type": "object",
                        "properties": {
                            "batch": {"type": "object", "properties": {"id": {}}, "required": ["id"], "additionalProperties": false},
                            "schema": {"type": "object", "properties": {"id": {}}, "required": ["id"], "additionalProperties": false},
                            "count": {"type": "integer", "minimum": 0, "maximum": 1000},
                        },
                        "required": ["batch", "schema", "count"],
                        "additionalProperties": false,
                    },
                    "validRows": {"type": "array", "maxItems": 1000},
                    "invalidRows": {"type": "array", "maxItems": 1000},
                },
                "required": ["meta", "validRows", "invalidRows"],
                "additionalProperties": false,
            },
        },
        "required": ["event", "data"],
        "additionalProperties": false,
    })
}

/// The headers a signed webhook's requests carry (any format), as an
/// object of header names (lower case) to values.
fn standard_webhooks() -> Value {
    json!({
        "description": "The Standard Webhooks headers of a signed webhook's requests (any format): verify `webhook-signature` over `webhook-id.webhook-timestamp.body` with the webhook's key.",
        "type": "object",
        "properties": {
            "webhook-id": {"type": "string", "minLength": 1, "description": "the event's UUID (Flatfile: with the part's number)"},
            "webhook-timestamp": {"type": "string", "pattern": "^[0-9]+$", "description": "seconds since the epoch, of the attempt"},
            "webhook-signature": {"type": "string", "pattern": "^v1,[A-Za-z0-9+/]+={0,2}( v1,[A-Za-z0-9+/]+={0,2})*$", "description": "one `v1,<base64 HMAC-SHA256>` per key, space-separated"},
        },
        "required": ["webhook-id", "webhook-timestamp", "webhook-signature"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Rules {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.yaml"), text).unwrap();
        crate::rules::load_dir(dir.path(), &|_| None).unwrap()
    }

    const TWO_ROUTES: &str = r#"routes:
  - name: a
    event: thing_done
    path: /a
    data:
      id: $response.body.id
      size: $response.body.size
  - name: b
    event: thing_done
    path: /b
    data:
      id: $response.body.id
      extra: {nested: $request.body.x}
webhooks:
  - key: hook
    url: https://user:pw@receiver.example/hooks?token=t
    events: [thing_done]
    filter: {"==": [{"var": "data.id"}, 1]}
"#;

    #[test]
    fn data_keys_of_every_route_are_required_the_others_optional() {
        let rules = rules(TWO_ROUTES);
        let catalog = Catalog::new(&rules);
        let s = catalog
            .schema(Shape::Body(Format::OneSchema), "thing_done")
            .unwrap();
        let data = &s["properties"]["data"];
        assert_eq!(data["required"], json!(["id"]));
        let keys: Vec<&String> = data["properties"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["extra", "id", "size"]);
        assert_eq!(
            data["properties"]["extra"]["properties"]["nested"]["description"],
            "from \"$request.body.x\""
        );
        assert_eq!(s["properties"]["event_type"]["const"], "thing_done");
        assert!(catalog
            .schema(Shape::Body(Format::OneSchema), "nope")
            .is_none());
        assert!(catalog
            .event_types()
            .contains(&"session_stalled".to_string()));
    }

    #[test]
    fn every_schema_is_a_valid_2020_12_schema() {
        let rules = rules(TWO_ROUTES);
        let n = Catalog::new(&rules).check().unwrap();
        assert_eq!(n, 2 * Shape::ALL.len());
    }

    #[test]
    fn the_document_names_no_credential_of_a_webhook_url() {
        let rules = rules(TWO_ROUTES);
        let doc = Catalog::new(&rules).asyncapi();
        let text = doc.to_string();
        assert!(!text.contains("pw") && !text.contains("token=t"), "{text}");
        assert_eq!(doc["servers"]["hook"]["host"], "receiver.example");
        assert_eq!(doc["channels"]["hook"]["address"], "/hooks");
        assert!(doc["operations"]["deliver_hook"]["description"]
            .as_str()
            .unwrap()
            .contains("filter"));
        assert!(doc["channels"]["hook"]["messages"]["thing_done"].is_object());
        assert!(unresolved(&doc).is_empty());
        let mut broken = doc.clone();
        broken["operations"]["deliver_hook"]["channel"]["$ref"] = json!("#/channels/nope");
        assert_eq!(
            unresolved(&broken).len(),
            2,
            "the ref, and the message not of it"
        );
    }
}
