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

/// A Dromo-style headless import.
#[derive(Debug, Clone)]
struct HeadlessImport {
    request: Value,
    status: &'static str,
    rows: Vec<Vec<String>>,
    /// Polls while RUNNING; the import finishes on the second.
    polls: u32,
}

#[derive(Default)]
struct Importer {
    embeds: Mutex<HashMap<u64, Embed>>,
    headless: Mutex<HashMap<String, HeadlessImport>>,
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
        .route("/api/v1/headless/imports/", post(headless_create))
        .route("/api/v1/headless/imports/{id}/", get(headless_show))
        .route(
            "/api/v1/headless/imports/{id}/upload",
            axum::routing::put(headless_upload),
        )
        .route(
            "/v1/batches/{batch_id}/submit",
            post(batch_submit).layer(axum::extract::DefaultBodyLimit::max(MAX_BATCH_BYTES)),
        )
        .route("/_fixtures/gzip", get(fixture_gzip))
        .route("/_fixtures/chunked", get(fixture_chunked))
        .route("/_fixtures/empty", get(|| async { StatusCode::NO_CONTENT }))
        .route("/_fixtures/echo", post(fixture_echo))
        .route("/_fixtures/count", post(fixture_count))
        .route("/_fixtures/stream", get(fixture_stream))
        .route("/_fixtures/gzip-bomb", get(fixture_gzip_bomb))
        .route("/_fixtures/headers", get(fixture_headers))
        .with_state(state)
}

/// Large batch submissions are accepted (the Flatfile-style route).
const MAX_BATCH_BYTES: usize = 64 << 20;

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
    let rows = csv_rows(&text);
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
        let invalid = invalid_emails(&e.rows, e.header_index);
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

/// Reads the body as it streams in, holding none of it: its length and
/// CRC-32, so a large body can be compared without being kept.
async fn fixture_count(body: Body) -> Response {
    use tokio_stream::StreamExt as _;
    let mut stream = body.into_data_stream();
    let (mut bytes, mut crc) = (0u64, flate2::Crc::new());
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return fail(StatusCode::BAD_REQUEST, "unreadable body");
        };
        bytes += chunk.len() as u64;
        crc.update(&chunk);
    }
    Json(json!({"bytes": bytes, "crc32": crc.sum()})).into_response()
}

/// Query parameters of the fixtures that take some.
#[derive(Deserialize)]
struct FixtureQuery {
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    layers: u32,
    #[serde(default)]
    n: usize,
    #[serde(default)]
    size: usize,
}

/// `bytes` bytes of JSON-ish text (an array of digits, never closed),
/// generated as they are sent.
async fn fixture_stream(axum::extract::Query(q): axum::extract::Query<FixtureQuery>) -> Response {
    const CHUNK: usize = 64 << 10;
    let block = Bytes::from(
        std::iter::once(b'[')
            .chain((1..CHUNK).map(|i| {
                if i % 2 == 1 {
                    b'0' + (i % 10) as u8
                } else {
                    b','
                }
            }))
            .collect::<Vec<u8>>(),
    );
    let total = q.bytes;
    let stream = tokio_stream::iter((0..total.div_ceil(CHUNK as u64)).map(move |i| {
        let n = (total - i * CHUNK as u64).min(CHUNK as u64) as usize;
        Ok::<_, std::io::Error>(block.slice(..n))
    }));
    (
        [
            ("content-type", "application/json".to_string()),
            ("content-length", total.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A gzip bomb: under 1 MiB that expands to about 1 GiB of zeros
/// (`layers=1`, gzip members end to end), or about 64 KiB compressed
/// twice that expands to 4 GiB (`layers=2`, `Content-Encoding: gzip, gzip`).
async fn fixture_gzip_bomb(
    axum::extract::Query(q): axum::extract::Query<FixtureQuery>,
) -> Response {
    static BOMBS: std::sync::OnceLock<(Bytes, Bytes)> = std::sync::OnceLock::new();
    let (one, two) = BOMBS.get_or_init(|| {
        let gzip = |data: &[u8]| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            let _ = gz.write_all(data);
            gz.finish().unwrap_or_default()
        };
        // One member: 1 MiB of zeros, about 1 KiB.
        let member = gzip(&vec![0u8; 1 << 20]);
        let members = |n: usize| member.repeat(n);
        let one = members(((1 << 20) - 4096) / member.len());
        let two = gzip(&members(4096));
        (Bytes::from(one), Bytes::from(two))
    });
    let (body, encoding) = match q.layers {
        2 => (two.clone(), "gzip, gzip"),
        _ => (one.clone(), "gzip"),
    };
    (
        [
            ("content-type", "application/json"),
            ("content-encoding", encoding),
        ],
        body,
    )
        .into_response()
}

/// `n` response headers `x-fixture-<i>` of `size` bytes each, and one
/// whose value is not UTF-8.
async fn fixture_headers(axum::extract::Query(q): axum::extract::Query<FixtureQuery>) -> Response {
    let mut resp = Json(json!({"headers": q.n})).into_response();
    let value = axum::http::HeaderValue::from_str(&"v".repeat(q.size.min(1 << 20))).ok();
    let headers = resp.headers_mut();
    for i in 0..q.n.min(10_000) {
        if let (Ok(name), Some(v)) = (
            axum::http::HeaderName::try_from(format!("x-fixture-{i}")),
            value.clone(),
        ) {
            headers.insert(name, v);
        }
    }
    if let Ok(v) = axum::http::HeaderValue::from_bytes(b"caf\xe9 \xff\xfe") {
        headers.insert("x-not-utf8", v);
    }
    resp
}

/// Dromo headless: create an import; it waits for its file.
async fn headless_create(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    if !body.get("schema_id").is_some_and(Value::is_string) {
        return fail(StatusCode::BAD_REQUEST, "schema_id is required");
    }
    let id = uuid::Uuid::new_v4().to_string();
    let import = HeadlessImport {
        request: body,
        status: "AWAITING_UPLOAD",
        rows: Vec::new(),
        polls: 0,
    };
    let view = headless_view(&id, &import);
    s.headless
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, import);
    (StatusCode::CREATED, Json(view)).into_response()
}

/// Dromo headless: upload the file (the raw CSV as the body).
async fn headless_upload(State(s): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    let mut imports = s.headless.lock().unwrap_or_else(|e| e.into_inner());
    let Some(import) = imports.get_mut(&id) else {
        return fail(StatusCode::NOT_FOUND, "no such import");
    };
    if import.status != "AWAITING_UPLOAD" {
        return fail(StatusCode::CONFLICT, "the file was uploaded already");
    }
    import.rows = csv_rows(&String::from_utf8_lossy(&body));
    import.status = "RUNNING";
    Json(headless_view(&id, import)).into_response()
}

/// Dromo headless: the import, as polled. A RUNNING import finishes on
/// its second poll: FAILED without data rows, NEEDS_REVIEW when an
/// `email` cell lacks `@`, else SUCCESSFUL.
async fn headless_show(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let mut imports = s.headless.lock().unwrap_or_else(|e| e.into_inner());
    let Some(import) = imports.get_mut(&id) else {
        return fail(StatusCode::NOT_FOUND, "no such import");
    };
    if import.status == "RUNNING" {
        import.polls += 1;
        if import.polls >= 2 {
            import.status = match invalid_emails(&import.rows, 0) {
                _ if import.rows.len() < 2 => "FAILED",
                0 => "SUCCESSFUL",
                _ => "NEEDS_REVIEW",
            };
        }
    }
    Json(headless_view(&id, import)).into_response()
}

fn headless_view(id: &str, import: &HeadlessImport) -> Value {
    let field = |k: &str| import.request.get(k).cloned().unwrap_or(Value::Null);
    let done = matches!(import.status, "SUCCESSFUL" | "NEEDS_REVIEW");
    json!({
        "id": id,
        "status": import.status,
        "schema_id": field("schema_id"),
        "original_filename": field("original_filename"),
        "import_identifier": field("import_identifier"),
        "development_mode": import.request.get("development_mode").and_then(Value::as_bool).unwrap_or(false),
        "num_data_rows": import.rows.len().saturating_sub(1),
        "has_data": done,
        "errors": if import.status == "FAILED" { json!(["the file has no data rows"]) } else { json!([]) },
        "review_url": format!("https://importer.invalid/review/{id}"),
        "original_file_download": format!("https://importer.invalid/files/{id}"),
    })
}

fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(|c| c.trim().to_string()).collect())
        .collect()
}

/// Rows after the header whose `email` cell lacks `@`.
fn invalid_emails(rows: &[Vec<String>], header_index: usize) -> usize {
    let header = rows.get(header_index).cloned().unwrap_or_default();
    let Some(email) = header.iter().position(|c| c.eq_ignore_ascii_case("email")) else {
        return 0;
    };
    rows.iter()
        .skip(header_index + 1)
        .filter(|r| !r.get(email).is_some_and(|v| v.contains('@')))
        .count()
}

/// Flatfile-style: submit a batch's valid and invalid rows.
async fn batch_submit(Path(batch_id): Path<String>, body: Bytes) -> Response {
    if body.len() > MAX_BATCH_BYTES {
        return fail(StatusCode::PAYLOAD_TOO_LARGE, "batch too large");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return fail(StatusCode::BAD_REQUEST, "body must be JSON");
    };
    let count = |k: &str| body.get(k).and_then(Value::as_array).map_or(0, Vec::len);
    Json(json!({
        "batch_id": batch_id,
        "status": "submitted",
        "valid": count("valid_rows"),
        "invalid": count("invalid_rows"),
    }))
    .into_response()
}
