//! The admin listener, served by axum inside a Pingora background
//! service: `/metrics`, `/healthz`, `/readyz` without auth, and the
//! `/v1` API behind bearer tokens with roles ([`access`]), every change
//! recorded in the audit trail ([`audit`]).

mod access;
mod audit;
mod catalog;
mod console;
mod deliveries;
pub use deliveries::parse_since_text;
mod events;
mod history;
mod registry;
mod search;
mod sessions;
mod test_event;
mod webhooks;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::app::Shared;
use crate::rules::write::{self, Change, WriteError};
use crate::rules::Rules;
use std::path::Path as FsPath;

/// The OpenAPI 3.1 document of this API (`docs/openapi.json`).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// Request bodies larger than this are refused.
const MAX_BODY_BYTES: usize = 1 << 20;

/// The admin HTTP service on a listener bound before start-up.
pub struct Admin {
    shared: Arc<Shared>,
    listener: Mutex<Option<std::net::TcpListener>>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, listener: std::net::TcpListener) -> Self {
        Self {
            shared,
            listener: Mutex::new(Some(listener)),
        }
    }
}

/// The admin API's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/v1/embeds/{embed_id}/events", get(events::list))
        .route("/v1/events", axum::routing::post(events::push))
        .route(
            "/v1/event-webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route("/v1/apps", axum::routing::post(registry::create_app))
        .route(
            "/v1/apps/{id}",
            get(registry::show_app).put(registry::update_app),
        )
        .route(
            "/v1/topics/{topic}/events",
            get(registry::list_events).post(registry::register),
        )
        .route(
            "/v1/topics/{topic}/events/bulk-delete",
            axum::routing::post(registry::bulk_delete),
        )
        .route(
            "/v1/topics/{topic}/events/{name}",
            axum::routing::put(registry::update_event),
        )
        .route("/v1/sessions", get(sessions::list))
        .route("/v1/sessions/{key}", get(sessions::show))
        .route("/v1/sessions/{key}/deliveries", get(sessions::deliveries))
        // The same by `?key=`: any key, `.` and `..` included (the console's).
        .route("/v1/session", get(sessions::show_by_query))
        .route("/v1/session/deliveries", get(sessions::deliveries_by_query))
        .route("/v1/session/events", get(events::list_by_query))
        .route("/v1/overview", get(sessions::overview))
        .route(
            "/v1/event-webhooks/{key}/stats",
            get(sessions::webhook_stats),
        )
        .route("/v1/deliveries", get(deliveries::list))
        .route(
            "/v1/deliveries/replay",
            axum::routing::post(deliveries::replay),
        )
        .route("/v1/deliveries/{id}", get(deliveries::show))
        .route(
            "/v1/deliveries/{id}/retry",
            axum::routing::post(deliveries::retry),
        )
        .route(
            "/v1/event-webhooks/{key}/enable",
            axum::routing::post(deliveries::enable),
        )
        .route(
            "/v1/event-webhooks/{key}",
            get(webhooks::show)
                .put(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/v1/whoami", get(access::whoami))
        .route("/v1/audit", get(audit::list))
        .route("/v1/search", get(search::search))
        .route(
            "/v1/deliveries/retry",
            axum::routing::post(deliveries::retry_matching),
        )
        .route("/v1/deliveries/{id}/payload", get(deliveries::payload_part))
        .route(
            "/v1/event-webhooks/{key}/test",
            axum::routing::post(test_event::send),
        )
        .route("/v1/event-webhooks/{key}/history", get(history::show))
        .route("/v1/catalog/asyncapi.json", get(catalog::asyncapi))
        .route("/v1/catalog/schemas/{format}/{file}", get(catalog::schema))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            access::require_token,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(api)
        .merge(console::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(console::secure))
        .with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready.load(Ordering::Acquire) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "starting or shutting down",
        )
    }
}

/// An error in the admin API's shape: `{"error": {"code", "message"}}`.
pub fn error(status: StatusCode, code: &'static str, message: &str) -> Response {
    ApiError::new(status, code, message).into_response()
}

/// The body of a route that takes JSON: `Content-Type: application/json`
/// (or `application/*+json`), else 415; at most [`MAX_BODY_BYTES`], else
/// 413; both in the API's error shape. The handler parses it.
pub struct JsonBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        match Bytes::from_request(request, state).await {
            Ok(body) => Ok(Self(body)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is over the limit of {MAX_BODY_BYTES} bytes"),
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                e.body_text(),
            )),
        }
    }
}

/// `application/json`, `application/*+json`, with any parameters.
fn is_json(headers: &header::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == mime::APPLICATION
                && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
        })
}

/// An admin API error; `problems` lists rules problems (`file:line: reason`).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    problems: Vec<String>,
    /// The problems by the request field they are about.
    fields: std::collections::BTreeMap<String, Vec<String>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
            fields: Default::default(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn with_problems(mut self, problems: Vec<String>) -> Self {
        self.problems = problems;
        self
    }

    /// Shows the fields by the names the request used (`renames`: the
    /// written name, the request's name).
    pub fn renamed_fields(mut self, renames: &[(&str, &str)]) -> Self {
        self.fields = std::mem::take(&mut self.fields)
            .into_iter()
            .map(|(k, v)| {
                let shown = renames
                    .iter()
                    .find(|(from, _)| *from == k)
                    .map_or(k, |(_, to)| to.to_string());
                (shown, v)
            })
            .collect();
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let failed = audit::Failed(self.code, self.message.clone());
        let mut body = json!({"code": self.code, "message": self.message});
        if !self.problems.is_empty() {
            body["problems"] = json!(self.problems);
        }
        if !self.fields.is_empty() {
            body["fields"] = json!(self.fields);
        }
        let mut response = (self.status, Json(json!({"error": body}))).into_response();
        response.extensions_mut().insert(failed);
        response
    }
}

/// An opaque page cursor for position `n` of kind `kind` (`seq`, `id`).
fn encode_cursor(kind: &str, n: impl std::fmt::Display) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{kind}:{n}"))
}

/// The position in a cursor [`encode_cursor`] made with `kind`.
fn decode_cursor<T: std::str::FromStr>(kind: &str, cursor: &str) -> Option<T> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix(kind)?
        .strip_prefix(':')?
        .parse()
        .ok()
}

/// A page size from the query: `default` when absent, else 1 to `max`.
fn page_limit(text: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    let limit = text.map_or(Ok(default), str::parse::<usize>).unwrap_or(0);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_limit",
            format!("limit must be between 1 and {max}"),
        ))
    }
}

/// A JSON body, or a 400 in the admin API's shape.
fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Under the admin lock: plans the change against the current rules,
/// checks the directory with it, writes it, and switches the running rules.
pub(crate) async fn change<F>(shared: &Arc<Shared>, plan: F) -> Result<Arc<Rules>, ApiError>
where
    F: FnOnce(&Rules, &FsPath) -> Result<Vec<Change>, ApiError> + Send + 'static,
{
    let _one_at_a_time = shared.admin_writes.lock().await;
    let current = shared.rules.load_full();
    let dir = shared.config.rules_dir.clone();
    let planned = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(Vec<Change>, Rules), ApiError> {
            let changes = plan(&current, &dir)?;
            let rules = write::validate(&dir, &changes).map_err(|e| invalid(e, &changes))?;
            Ok((changes, rules))
        })
    };
    let (changes, rules) = planned
        .await
        .map_err(|e| ApiError::internal(format!("the change was interrupted: {e}")))??;
    // Shared first (JetStream): every instance, this one included, makes
    // what the bucket holds.
    if let Some(js) = &shared.jetstream {
        crate::rules::replicate::publish(js, &dir, &changes)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                )
            })?;
    }
    tokio::task::spawn_blocking(move || write::apply(&changes))
        .await
        .map_err(|e| ApiError::internal(format!("the change was interrupted: {e}")))?
        .map_err(|e| ApiError::internal(WriteError::Io(e).to_string()))?;
    let rules = Arc::new(rules);
    shared
        .metrics
        .init_known_series(rules.webhooks.iter().map(|w| w.key.as_str()));
    shared.metrics.describe_webhooks(&rules.webhooks);
    shared.rules.store(rules.clone());
    shared
        .metrics
        .rules_reloads
        .with_label_values(&["success"])
        .inc();
    tracing::info!("rules changed through the admin API");
    Ok(rules)
}

fn invalid(e: WriteError, changes: &[Change]) -> ApiError {
    let fields = match &e {
        WriteError::Invalid(problems) => problem_fields(&problems.0, changes),
        WriteError::Io(_) => Default::default(),
    };
    let mut error = match e {
        // A subscriber without the publisher's permission: forbidden.
        WriteError::Invalid(problems)
            if problems
                .0
                .iter()
                .all(|p| p.reason.contains("holds none of app")) =>
        {
            let message = problems
                .0
                .iter()
                .map(|p| p.reason.clone())
                .collect::<Vec<_>>()
                .join("; ");
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
                .with_problems(problems.0.iter().map(ToString::to_string).collect())
        }
        WriteError::Invalid(problems) => {
            let message = problems
                .0
                .iter()
                .map(|p| p.reason.clone())
                .collect::<Vec<_>>()
                .join("; ");
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
                .with_problems(problems.0.iter().map(ToString::to_string).collect())
        }
        e @ WriteError::Io(_) => ApiError::internal(e.to_string()),
    };
    error.fields = fields;
    error
}

/// The field each problem is about, for the problems in a file the change
/// writes: the top-level key of the written object at or above the
/// problem's line (the API writes each key of its object on a line of its
/// own, at one indentation).
fn problem_fields(
    problems: &[crate::rules::Problem],
    changes: &[Change],
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut fields: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for p in problems {
        let text = changes.iter().find_map(|c| match c {
            Change::Write(path, text) if *path == p.file => Some(text),
            _ => None,
        });
        let Some(text) = text else { continue };
        let lines: Vec<&str> = text.lines().take(p.line.max(1)).collect();
        let field = lines.iter().rev().find_map(|line| {
            let key = line.strip_prefix(OBJECT_INDENT)?.strip_prefix('"')?;
            let (name, _) = key.split_once("\":")?;
            (!name.contains('"')).then_some(name)
        });
        if let Some(field) = field {
            fields
                .entry(field.to_string())
                .or_default()
                .push(p.reason.clone());
        }
    }
    fields
}

/// Where the keys of an object the API writes start: inside `{"<kind>": [{`.
const OBJECT_INDENT: &str = "      ";

#[async_trait]
impl BackgroundService for Admin {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin listener unusable");
                return;
            }
        };
        tokio::spawn(mark_ready_when_proxy_accepts(self.shared.clone()));
        let shared = self.shared.clone();
        let stop = async move {
            let _ = shutdown.changed().await;
            shared.ready.store(false, Ordering::Release);
        };
        if let Err(e) = axum::serve(listener, router(self.shared.clone()))
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "admin listener failed");
        }
    }
}

/// `/readyz` turns ready once the proxy listener accepts connections.
async fn mark_ready_when_proxy_accepts(shared: Arc<Shared>) {
    let listen = shared.config.listen;
    let probe = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            std::net::SocketAddr::from(([127, 0, 0, 1], listen.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while tokio::net::TcpStream::connect(probe).await.is_err() {
        if std::time::Instant::now() > deadline {
            tracing::error!(%listen, "the proxy listener does not accept connections; /readyz stays 503");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    shared.ready.store(true, Ordering::Release);
    crate::upgrade::notify_ready();
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_content_types() {
        let json = |ct: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(axum::http::header::CONTENT_TYPE, ct.parse().unwrap());
            super::is_json(&h)
        };
        assert!(json("application/json"));
        assert!(json("application/json; charset=utf-8"));
        assert!(json("Application/JSON"));
        assert!(json("application/merge-patch+json"));
        assert!(!json("text/plain"));
        assert!(!json("application/x-www-form-urlencoded"));
        assert!(!json("text/json-ish"));
        assert!(!super::is_json(&axum::http::HeaderMap::new()));
    }
}
