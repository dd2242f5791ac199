//! Recorded traffic: a HAR file (HTTP Archive 1.1 to 1.3, what browsers'
//! developer tools export with "Save all as HAR") read into the exchanges
//! the proxy would have handed to the pipeline, for `taphook explain`.
//!
//! A HAR's bodies are already decoded (`content.text` is the text the
//! browser showed, base64 when `encoding` says so), so `Content-Encoding`
//! is left out of the headers the routes see: the derive stage would try
//! to decompress the body again. taphook's own recordings (`record:`,
//! marked `_taphook`) keep bodies as copied, and the header with them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use har::v1_3::{Entries, Headers as HarHeaders, PostData};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::derive::{Captured, Exchange, FilePart};
use crate::proxy::multipart::MultipartScanner;

/// A body larger than this is kept as truncated (as the proxy's cap would).
const MAX_BODY: usize = 16 << 20;

/// Why a HAR could not be read: the entry and the field, where known.
#[derive(Debug, thiserror::Error)]
pub enum HarError {
    #[error("not JSON: {0}")]
    Json(serde_json::Error),
    #[error("not a HAR: {0}")]
    Shape(String),
    #[error("entries[{entry}] ({at}): {reason}")]
    Field {
        entry: usize,
        at: String,
        reason: String,
    },
}

/// One exchange of a HAR, with its position.
pub struct Recorded {
    /// The entry's index in `log.entries`, from 0.
    pub entry: usize,
    pub exchange: Exchange,
}

/// Reads a HAR document into its exchanges, in the file's order.
pub fn read(text: &str) -> Result<Vec<Recorded>, HarError> {
    // Browsers may write a byte order mark; the HAR spec says to accept it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root: Value = serde_json::from_str(text).map_err(HarError::Json)?;
    let log = root
        .get("log")
        .filter(|l| l.is_object())
        .ok_or_else(|| HarError::Shape("no top-level `log` object".into()))?;
    match log.get("version").and_then(Value::as_str) {
        Some("1.1" | "1.2" | "1.3") | None => {}
        Some(v) => return Err(HarError::Shape(format!("unsupported HAR version `{v}`"))),
    }
    let entries = log
        .get("entries")
        .and_then(Value::as_array)
        .ok_or_else(|| HarError::Shape("`log.entries` is not a list".into()))?;
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let entry: Entries =
                serde_path_to_error::deserialize(e).map_err(|err| HarError::Field {
                    entry: i,
                    at: err.path().to_string(),
                    reason: err.inner().to_string(),
                })?;
            // taphook's own recordings keep bodies as they were copied,
            // compressed ones included, with their `Content-Encoding`.
            let decoded = e.get("_taphook").is_none();
            exchange(i, &entry, decoded).map(|exchange| Recorded { entry: i, exchange })
        })
        .collect()
}

fn exchange(i: usize, e: &Entries, decoded: bool) -> Result<Exchange, HarError> {
    let field = |at: &str, reason: String| HarError::Field {
        entry: i,
        at: at.into(),
        reason,
    };
    let uri: http::Uri = e
        .request
        .url
        .parse()
        .map_err(|err| field("request.url", format!("`{}`: {err}", e.request.url)))?;
    let status = u16::try_from(e.response.status)
        .ok()
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| {
            field(
                "response.status",
                format!("{} is not an HTTP status", e.response.status),
            )
        })?;
    let request_headers =
        headers(&e.request.headers).map_err(|reason| field("request.headers", reason))?;
    let mut response_headers =
        headers(&e.response.headers).map_err(|reason| field("response.headers", reason))?;
    if decoded {
        response_headers.remove(http::header::CONTENT_ENCODING);
    }
    let (request_body, files) = match &e.request.post_data {
        Some(post) => post_data(post).map_err(|reason| field("request.postData", reason))?,
        None => (None, Vec::new()),
    };
    let response_body = match &e.response.content.text {
        Some(text) => Some(captured(
            &decode(text, e.response.content.encoding.as_deref())
                .map_err(|reason| field("response.content.text", reason))?,
        )),
        None => None,
    };
    Ok(Exchange {
        request_id: format!("har-entry-{i}"),
        method: e.request.method.to_ascii_uppercase(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        request_headers,
        request_body,
        files,
        status,
        response_headers,
        response_body,
        completed_at: started(&e.started_date_time, e.time),
        trace: None,
    })
}

/// Names lower-cased; HTTP/2 pseudo-headers (`:authority`...) left out.
fn headers(list: &[HarHeaders]) -> Result<HeaderMap, String> {
    header_map(
        list.iter()
            .filter(|h| !h.name.starts_with(':'))
            .map(|h| (h.name.trim(), h.value.as_str())),
    )
}

/// A header map from names and values (also `taphook test`'s inline
/// exchanges); a name or value HTTP does not allow is named in the error.
pub(crate) fn header_map<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?,
            HeaderValue::from_str(value)
                .map_err(|_| format!("the value of `{name}` is not a header value"))?,
        );
    }
    Ok(map)
}

/// The request body, and the files of a multipart one.
fn post_data(post: &PostData) -> Result<(Option<Captured>, Vec<FilePart>), String> {
    let text = match &post.text {
        Some(t) => decode(t, post.encoding.as_deref())?,
        None => Vec::new(),
    };
    if let Some(mut scanner) = MultipartScanner::for_content_type(&post.mime_type) {
        if !text.is_empty() {
            scanner.feed(&text);
            return Ok((None, scanner.into_files()));
        }
        // Browsers often keep a multipart body as its fields only.
        let files = post
            .params
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(FilePart {
                    field: p.name.clone(),
                    filename: p.file_name.clone()?,
                    content_type: p.content_type.clone(),
                })
            })
            .collect();
        return Ok((None, files));
    }
    if text.is_empty() {
        if let Some(params) = &post.params {
            // A form kept as its fields: encode it back.
            let form = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(
                    params
                        .iter()
                        .map(|p| (&p.name, p.value.as_deref().unwrap_or(""))),
                )
                .finish();
            return Ok((Some(captured(form.as_bytes())), Vec::new()));
        }
    }
    Ok((Some(captured(&text)), Vec::new()))
}

fn decode(text: &str, encoding: Option<&str>) -> Result<Vec<u8>, String> {
    match encoding {
        Some(e) if e.eq_ignore_ascii_case("base64") => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|err| format!("`encoding: base64` but the text is not base64 ({err})")),
        _ => Ok(text.as_bytes().to_vec()),
    }
}

/// A whole body, as the proxy would have copied it under a large cap.
pub(crate) fn captured(bytes: &[u8]) -> Captured {
    let mut c = Captured::new(MAX_BODY);
    c.push(bytes);
    c
}

/// When the exchange completed: its start plus its duration; the Unix
/// epoch when the start is not RFC 3339.
fn started(at: &str, time_ms: f64) -> SystemTime {
    let start = rfc3339(at).unwrap_or(UNIX_EPOCH);
    let took = Duration::try_from_secs_f64(time_ms.max(0.0) / 1000.0).unwrap_or_default();
    start + took
}

/// RFC 3339 in UTC; with an offset, the local time as if UTC (close
/// enough for an event's `created_at` in `explain`).
fn rfc3339(at: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(at)
        .ok()
        .or_else(|| humantime::parse_rfc3339_weak(at.get(..19)?).ok())
}
