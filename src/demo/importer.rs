//! The reference importer: a small service modelled on OneSchema's
//! headless embed API, used by `taphook demo` and the tests as the
//! upstream. Requests with `X-API-KEY` are API calls; the others come from
//! the importer's UI. It also serves a few `/_fixtures/` responses (gzip,
//! chunked, empty, echo) for checking that the proxy changes nothing.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Default)]
struct Embed {
    template_key: String,
    status: &'static str,
    filename: Option<String>,
    rows: Vec<Vec<String>>,
    header_index: usize,
}

#[derive(Default)]
struct Importer {
    embeds: Mutex<HashMap<u64, Embed>>,
    next_id: AtomicU64,
}

type Shared = Arc<Importer>;

/// A running reference importer on a loopback port.
pub struct ReferenceImporter {
    pub addr: SocketAddr,
}

impl ReferenceImporter {
    /// Starts on a free loopback port, in the current Tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The importer's routes.
pub fn router() -> Router {
    let state: Shared = Arc::new(Importer {
        next_id: AtomicU64::new(53511),
        ..Default::default()
    });
    Router::new()
        .route("/v1/embeds", post(create))
        .route("/v1/embeds/{id}", delete(close).get(show))
        .route("/v1/embeds/{id}/upload", post(upload))
        .route("/v1/embeds/{id}/set-header", post(set_header))
        .route("/v1/embeds/{id}/map", post(map_columns))
        .route("/v1/embeds/{id}/sheet-operations", post(sheet_operation))
        .route("/v1/embeds/{id}/import", post(import))
        .route("/v1/embeds/{id}/resume", post(resume))
        .route("/_fixtures/gzip", get(fixture_gzip))
        .route("/_fixtures/chunked", get(fixture_chunked))
        .route("/_fixtures/empty", get(|| async { StatusCode::NO_CONTENT }))
        .route("/_fixtures/echo", post(fixture_echo))
        .with_state(state)
}

fn fail(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": {"message": message}}))).into_response()
}

#[derive(Deserialize)]
struct CreateEmbed {
    template_key: String,
    #[serde(default)]
    #[allow(dead_code)]
    embed_user_jwt: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    event_webhook_keys: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    dev_mode: bool,
}

async fn create(State(s): State<Shared>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<CreateEmbed>(&body) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "body must be JSON with template_key",
        );
    };
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    let embed = Embed {
        template_key: req.template_key,
        status: "initialized",
        ..Default::default()
    };
    s.embeds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, embed);
    Json(json!({"id": id, "token": format!("tok_{id}"), "status": "initialized"})).into_response()
}

/// Runs `f` on embed `id`, or answers 404.
fn with_embed(s: &Shared, id: u64, f: impl FnOnce(&mut Embed) -> Response) -> Response {
    let mut embeds = s.embeds.lock().unwrap_or_else(|e| e.into_inner());
    match embeds.get_mut(&id) {
        Some(embed) => f(embed),
        None => fail(StatusCode::NOT_FOUND, "no such embed"),
    }
}

async fn show(State(s): State<Shared>, Path(id): Path<u64>) -> Response {
    with_embed(&s, id, |e| {
        Json(json!({"id": id, "status": e.status, "template_key": e.template_key})).into_response()
    })
}

async fn upload(
    State(s): State<Shared>,
    Path(id): Path<u64>,
    mut multipart: Multipart,
) -> Response {
    let mut file = None;
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() == Some("file") {
            let filename = field.file_name().unwrap_or("upload").to_string();
            match field.bytes().await {
                Ok(bytes) => file = Some((filename, bytes)),
                Err(_) => return fail(StatusCode::BAD_REQUEST, "unreadable upload"),
            }
        }
    }
    let Some((filename, bytes)) = file else {
        return fail(
            StatusCode::BAD_REQUEST,
            "multipart field `file` is required",
        );
    };
    let text = String::from_utf8_lossy(&bytes);
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(|c| c.trim().to_string()).collect())
        .collect();
    with_embed(&s, id, |e| {
        e.status = "uploaded";
        e.filename = Some(filename.clone());
        e.rows = rows;
        Json(
            json!({"id": id, "status": "uploaded", "filename": filename, "num_rows": e.rows.len()}),
        )
        .into_response()
    })
}

async fn set_header(
    State(s): State<Shared>,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Response {
    let index = body.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
    with_embed(&s, id, |e| {
        if index >= e.rows.len().max(1) {
            return fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                "header row index out of range",
            );
        }
        e.status = "header_selected";
        e.header_index = index;
        let columns = e.rows.get(index).cloned().unwrap_or_default();
        Json(json!({"id": id, "status": "header_selected", "header_row_index": index, "columns": columns})).into_response()
    })
}

/// Validates the uploaded rows: an `email` column without `@` is an error.
async fn map_columns(State(s): State<Shared>, Path(id): Path<u64>) -> Response {
    with_embed(&s, id, |e| {
        e.status = "mapped";
        let header = e.rows.get(e.header_index).cloned().unwrap_or_default();
        let data = e.rows.iter().skip(e.header_index + 1);
        let email = header.iter().position(|c| c.eq_ignore_ascii_case("email"));
        let invalid = email
            .map(|i| {
                data.filter(|r| !r.get(i).is_some_and(|v| v.contains('@')))
                    .count()
            })
            .unwrap_or(0);
        let mut by_column = serde_json::Map::new();
        if invalid > 0 {
            by_column.insert("email".into(), json!({"invalid_email": invalid}));
        }
        Json(json!({
            "id": id,
            "status": "mapped",
            "num_data_rows": e.rows.len().saturating_sub(e.header_index + 1),
            "validation_error_counts": {"total": invalid, "by_column": by_column},
        }))
        .into_response()
    })
}

async fn sheet_operation(
    State(s): State<Shared>,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> Response {
    let operation = body
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    with_embed(&s, id, |_| {
        Json(json!({"id": id, "status": "ok", "operation": operation})).into_response()
    })
}

async fn import(State(s): State<Shared>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    let import_type = if headers.contains_key("x-api-key") {
        "api"
    } else {
        "importer"
    };
    with_embed(&s, id, |e| {
        e.status = "submitted";
        let rows = e.rows.len().saturating_sub(e.header_index + 1);
        Json(json!({"id": id, "status": "submitted", "import_type": import_type, "num_data_rows": rows})).into_response()
    })
}

async fn resume(State(s): State<Shared>, Path(id): Path<u64>) -> Response {
    with_embed(&s, id, |e| {
        e.status = "resumed";
        Json(json!({"id": id, "token": format!("tok_{id}"), "status": "resumed"})).into_response()
    })
}

async fn close(State(s): State<Shared>, Path(id): Path<u64>) -> Response {
    with_embed(&s, id, |e| {
        e.status = "closed";
        Json(json!({"id": id, "status": "closed"})).into_response()
    })
}

async fn fixture_gzip() -> Response {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = gz.write_all(br#"{"fixture":"gzip","items":[1,2,3]}"#);
    let body = gz.finish().unwrap_or_default();
    (
        [
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("x-fixture", "gzip"),
        ],
        body,
    )
        .into_response()
}

async fn fixture_chunked() -> Response {
    let chunks = ["{\"fixture\":", "\"chunked\",", "\"n\":3}"];
    let stream = tokio_stream::iter(
        chunks.map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c.as_bytes()))),
    );
    (
        [("content-type", "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn fixture_echo(headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    (
        [
            ("content-type", ct),
            ("x-echo-length", body.len().to_string()),
        ],
        body,
    )
        .into_response()
}
