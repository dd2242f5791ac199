//! The exchange: what the proxy copied of one request and its response,
//! and the JSON document route expressions are evaluated against.
//!
//! Everything here runs off the proxy's hot path. Bodies are decoded
//! (gzip, deflate, br) with the output bounded by the capture cap, then
//! parsed as JSON or as a form; anything else becomes `null`.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};

/// The bytes all captures may hold at once, across requests in flight
/// and exchanges waiting for the pipeline.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
    /// Follows `used`, for `/metrics`.
    gauge: Option<prometheus::IntGauge>,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
            gauge: None,
        })
    }

    /// A budget whose use `gauge` shows.
    pub fn with_gauge(limit: usize, gauge: prometheus::IntGauge) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
            gauge: Some(gauge),
        })
    }

    /// Bytes currently held.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn take(&self, n: usize) -> bool {
        let before = self.used.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.limit {
            self.used.fetch_sub(n, Ordering::AcqRel);
            false
        } else {
            if let Some(g) = &self.gauge {
                g.add(n as i64);
            }
            true
        }
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        if let Some(g) = &self.gauge {
            g.sub(n as i64);
        }
    }
}

/// A bounded copy of one body: at most `cap` bytes, charged to a
/// [`Budget`] (if any), for at most until a deadline (if any). A copy
/// cut short by any of them is dropped at once (a cut body is never
/// parsed): its bytes go back to the budget, and only `truncated` stays.
#[derive(Debug, Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// The body was longer than the cap, the budget ran out, or it took
    /// longer than the deadline; `bytes` is then empty.
    pub truncated: bool,
    /// The cap that applied (also bounds decompression).
    pub cap: usize,
    budget: Option<Arc<Budget>>,
    deadline: Option<Instant>,
}

impl Captured {
    pub fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            truncated: false,
            cap,
            budget: None,
            deadline: None,
        }
    }

    pub fn with_budget(cap: usize, budget: Arc<Budget>) -> Self {
        let mut copy = Self::new(cap);
        copy.budget = Some(budget);
        copy
    }

    /// Stops copying at `deadline`: a body still arriving then (a client
    /// trickling it) is not copied, and what was copied is given back.
    pub fn until(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Appends `chunk`, unless the body outgrows the cap or the budget, or
    /// the deadline has passed: then the copy is dropped.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.truncated {
            return;
        }
        if chunk.len() > self.cap.saturating_sub(self.bytes.len())
            || self.deadline.is_some_and(|d| Instant::now() > d)
            || !self.budget.as_ref().is_none_or(|b| b.take(chunk.len()))
        {
            self.truncate();
            return;
        }
        self.bytes.extend_from_slice(chunk);
    }

    /// Marks the copy cut short and gives its bytes back.
    pub fn truncate(&mut self) {
        self.truncated = true;
        if let Some(budget) = &self.budget {
            budget.give(self.bytes.len());
        }
        self.bytes = Vec::new();
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(self.bytes.len());
        }
    }
}

/// One multipart part that carried a filename.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilePart {
    pub field: String,
    pub filename: String,
    pub content_type: Option<String>,
}

/// Headers as received: lower-case names, raw values. The proxy hands
/// over the request's own map (its values share the bytes Pingora read),
/// so a tapped exchange copies no header.
pub type Headers = http::HeaderMap;

/// One finished request/response pair, as copied by the proxy.
#[derive(Debug)]
pub struct Exchange {
    /// The client's `X-Request-Id`, or one the tap made up: logs about
    /// the exchange's events carry it.
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub request_headers: Headers,
    pub request_body: Option<Captured>,
    pub files: Vec<FilePart>,
    pub status: u16,
    pub response_headers: Headers,
    pub response_body: Option<Captured>,
    pub completed_at: SystemTime,
    /// The proxied request's span, when traces are on: derive's span and
    /// the events' spans are its children.
    pub trace: Option<crate::telemetry::Parent>,
}

impl Exchange {
    /// The first value of a request header, as text.
    pub fn request_header(&self, name: &str) -> Option<String> {
        first(&self.request_headers, name)
    }

    /// The whole exchange document, without `params`, `jwt` and
    /// `session`, which depend on the route and are filled in by derive.
    pub fn document(&self, environment_name: &str) -> Value {
        self.document_with(environment_name, Needs::ALL)
    }

    /// The exchange document with only the parts in `needs` built (the
    /// others are empty, `null` or `false`): the method, path, status and
    /// environment always; the query, each side's headers, the cookies,
    /// each side's parsed body (and whether it was cut short) and the
    /// files only when some expression reads them.
    pub fn document_with(&self, environment_name: &str, needs: Needs) -> Value {
        let query = match &self.query {
            Some(q) if needs.has(Needs::QUERY) => parse_form(q),
            _ => Map::new(),
        };
        let cookies = match self.request_header("cookie") {
            Some(c) if needs.has(Needs::REQUEST_COOKIES) => parse_cookies(&c),
            _ => Map::new(),
        };
        let body = |wanted: u16, headers: &Headers, body: Option<&Captured>| {
            if needs.has(wanted) {
                body_value(headers, body)
            } else {
                (Value::Null, false)
            }
        };
        let (req_body, req_truncated) = body(
            Needs::REQUEST_BODY,
            &self.request_headers,
            self.request_body.as_ref(),
        );
        let (resp_body, resp_truncated) = body(
            Needs::RESPONSE_BODY,
            &self.response_headers,
            self.response_body.as_ref(),
        );
        let headers = |wanted: u16, headers: &Headers| {
            Value::Object(if needs.has(wanted) {
                header_map(headers)
            } else {
                Map::new()
            })
        };
        let files = if needs.has(Needs::REQUEST_FILES) {
            serde_json::to_value(&self.files).unwrap_or(Value::Null)
        } else {
            Value::Array(Vec::new())
        };
        let mut request = Map::new();
        request.insert(
            "headers".into(),
            headers(Needs::REQUEST_HEADERS, &self.request_headers),
        );
        request.insert("cookies".into(), Value::Object(cookies));
        request.insert("body".into(), req_body);
        request.insert("truncated".into(), Value::Bool(req_truncated));
        request.insert("files".into(), files);
        let mut response = Map::new();
        response.insert("status".into(), Value::from(self.status));
        response.insert(
            "headers".into(),
            headers(Needs::RESPONSE_HEADERS, &self.response_headers),
        );
        response.insert("body".into(), resp_body);
        response.insert("truncated".into(), Value::Bool(resp_truncated));
        let mut doc = Map::new();
        doc.insert("method".into(), Value::String(self.method.clone()));
        doc.insert("path".into(), Value::String(self.path.clone()));
        doc.insert("params".into(), Value::Object(Map::new()));
        doc.insert("query".into(), Value::Object(query));
        doc.insert("request".into(), Value::Object(request));
        doc.insert("response".into(), Value::Object(response));
        doc.insert("jwt".into(), Value::Object(Map::new()));
        doc.insert("session".into(), Value::Object(Map::new()));
        doc.insert(
            "environment_name".into(),
            Value::String(environment_name.to_string()),
        );
        Value::Object(doc)
    }
}

/// The parts of an exchange's document that cost something to build
/// (parsing, decoding, copying), and which of them some expressions read:
/// worked out once per route at load ([`Needs::of_expr`]), so an
/// exchange builds only what its matching routes read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs(u16);

impl Needs {
    pub const QUERY: u16 = 1;
    pub const REQUEST_HEADERS: u16 = 1 << 1;
    pub const REQUEST_COOKIES: u16 = 1 << 2;
    pub const REQUEST_BODY: u16 = 1 << 3;
    pub const REQUEST_FILES: u16 = 1 << 4;
    pub const RESPONSE_HEADERS: u16 = 1 << 5;
    pub const RESPONSE_BODY: u16 = 1 << 6;
    const REQUEST: u16 =
        Self::REQUEST_HEADERS | Self::REQUEST_COOKIES | Self::REQUEST_BODY | Self::REQUEST_FILES;
    const RESPONSE: u16 = Self::RESPONSE_HEADERS | Self::RESPONSE_BODY;
    /// Everything: a whole document.
    pub const ALL: Needs = Needs(Self::QUERY | Self::REQUEST | Self::RESPONSE);
    /// Nothing beyond what is always there.
    pub const NONE: Needs = Needs(0);

    pub fn has(self, part: u16) -> bool {
        self.0 & part != 0
    }

    /// Both sets.
    pub fn union(self, other: Needs) -> Needs {
        Needs(self.0 | other.0)
    }

    /// What evaluating `expr` reads: the parts its `var` paths name, or
    /// everything when a path is computed at run time.
    pub fn of_expr(expr: &crate::filter::Expr) -> Needs {
        match expr.reads() {
            Some(paths) => paths
                .iter()
                .fold(Needs::NONE, |needs, path| needs.union(Self::of_path(path))),
            None => Needs::ALL,
        }
    }

    fn of_path(path: &str) -> Needs {
        let mut parts = path.split('.');
        let bits = match (parts.next().unwrap_or(""), parts.next()) {
            // The whole document.
            ("", _) => return Needs::ALL,
            ("query", _) => Self::QUERY,
            ("request", None) => Self::REQUEST,
            ("request", Some("headers")) => Self::REQUEST_HEADERS,
            ("request", Some("cookies")) => Self::REQUEST_COOKIES,
            ("request", Some("body" | "truncated")) => Self::REQUEST_BODY,
            ("request", Some("files")) => Self::REQUEST_FILES,
            ("response", None) => Self::RESPONSE,
            ("response", Some("headers")) => Self::RESPONSE_HEADERS,
            ("response", Some("body" | "truncated")) => Self::RESPONSE_BODY,
            // The method, path, status, environment, and what derive fills
            // in (params, session, jwt) are always there; anything else
            // is null in any document.
            _ => 0,
        };
        Needs(bits)
    }
}

fn first(headers: &Headers, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Lower-case names; a header seen twice keeps its first value.
fn header_map(headers: &Headers) -> Map<String, Value> {
    headers
        .keys()
        .filter_map(|k| {
            let v = headers.get(k)?;
            Some((
                k.as_str().to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            ))
        })
        .collect()
}

fn parse_form(text: &str) -> Map<String, Value> {
    let mut map = Map::new();
    for (k, v) in form_urlencoded::parse(text.as_bytes()) {
        map.entry(k.into_owned())
            .or_insert(Value::String(v.into_owned()));
    }
    map
}

fn parse_cookies(header: &str) -> Map<String, Value> {
    let mut map = Map::new();
    for cookie in cookie::Cookie::split_parse(header).flatten() {
        map.entry(cookie.name().to_string())
            .or_insert(Value::String(cookie.value().to_string()));
    }
    map
}

/// The parsed body and whether it was cut short.
fn body_value(headers: &Headers, body: Option<&Captured>) -> (Value, bool) {
    let Some(body) = body else {
        return (Value::Null, false);
    };
    if body.truncated {
        return (Value::Null, true);
    }
    let Some(decoded) = decode(
        first(headers, "content-encoding").as_deref(),
        &body.bytes,
        body.cap,
    ) else {
        return (Value::Null, true);
    };
    let content_type = first(headers, "content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let value = if content_type.starts_with("application/x-www-form-urlencoded") {
        std::str::from_utf8(&decoded)
            .map(|t| Value::Object(parse_form(t)))
            .unwrap_or(Value::Null)
    } else if decoded.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&decoded).unwrap_or(Value::Null)
    };
    (value, false)
}

/// Codings undone at most for one body. Each layer's output is bounded
/// by the cap, but a body wrapped in many layers would cost as many
/// passes; real traffic uses one.
pub const MAX_CODINGS: usize = 4;

/// Undoes `content-encoding` (applied in order, so undone in reverse).
/// `None` when the result would exceed `cap`, the data is corrupt, or it
/// names more than [`MAX_CODINGS`] codings.
pub fn decode(encoding: Option<&str>, bytes: &[u8], cap: usize) -> Option<Vec<u8>> {
    let Some(encoding) = encoding else {
        return Some(bytes.to_vec());
    };
    if encoding.split(',').nth(MAX_CODINGS).is_some() {
        return None;
    }
    let mut data = bytes.to_vec();
    for coding in encoding.rsplit(',').map(|c| c.trim().to_ascii_lowercase()) {
        data = match coding.as_str() {
            "" | "identity" => data,
            "gzip" | "x-gzip" => read_bounded(flate2::read::MultiGzDecoder::new(&data[..]), cap)?,
            "deflate" => read_bounded(flate2::read::ZlibDecoder::new(&data[..]), cap)
                .or_else(|| read_bounded(flate2::read::DeflateDecoder::new(&data[..]), cap))?,
            "br" => read_bounded(brotli::Decompressor::new(&data[..], 4096), cap)?,
            _ => return None,
        };
    }
    Some(data)
}

fn read_bounded(reader: impl Read, cap: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(cap as u64 + 1).read_to_end(&mut out).ok()?;
    (out.len() <= cap).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn exchange(req_headers: &[(&str, &str)], body: &[u8]) -> Exchange {
        let mut captured = Captured::new(1024);
        captured.push(body);
        Exchange {
            request_id: "test".into(),
            method: "POST".into(),
            path: "/v1/embeds".into(),
            query: Some("sheet=1&sheet=2&x=%20y".into()),
            request_headers: req_headers
                .iter()
                .map(|(k, v)| {
                    (
                        http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        http::HeaderValue::from_str(v).unwrap(),
                    )
                })
                .collect(),
            request_body: Some(captured),
            files: vec![],
            status: 200,
            response_headers: Headers::new(),
            response_body: None,
            completed_at: SystemTime::now(),
            trace: None,
        }
    }

    #[test]
    fn builds_only_what_is_read() {
        let ex = exchange(
            &[("content-type", "application/json"), ("cookie", "sid=abc")],
            br#"{"template_key":"contacts"}"#,
        );
        let needs =
            |rule: serde_json::Value| Needs::of_expr(&crate::filter::Expr::compile(&rule).unwrap());
        let body_only = needs(serde_json::json!("$request.body.template_key"));
        let doc = ex.document_with("P", body_only);
        assert_eq!(doc["request"]["body"]["template_key"], "contacts");
        assert_eq!(doc["request"]["headers"], serde_json::json!({}));
        assert_eq!(doc["request"]["cookies"], serde_json::json!({}));
        assert_eq!(doc["query"], serde_json::json!({}));
        assert_eq!(doc["method"], "POST");
        assert_eq!(doc["response"]["status"], 200);
        // What a path reads, part by part.
        let cookies = needs(serde_json::json!("$request.cookies.sid"));
        assert_eq!(
            ex.document_with("P", cookies)["request"]["cookies"]["sid"],
            "abc"
        );
        assert_eq!(
            ex.document_with("P", cookies)["request"]["body"],
            serde_json::Value::Null
        );
        assert!(needs(serde_json::json!("$request.truncated")).has(Needs::REQUEST_BODY));
        assert!(!needs(serde_json::json!("$response.status")).has(Needs::RESPONSE_BODY));
        assert_eq!(
            needs(serde_json::json!("$request")),
            needs(
                serde_json::json!({"cat": ["$request.headers", "$request.cookies", "$request.body", "$request.files"]})
            )
        );
        // The whole document, or a path computed when it runs: everything.
        assert_eq!(needs(serde_json::json!({"var": ""})), Needs::ALL);
        assert_eq!(
            needs(serde_json::json!({"var": {"cat": ["query", ".x"]}})),
            Needs::ALL
        );
        assert_eq!(ex.document_with("P", Needs::ALL), ex.document("P"));
        // Only the always-there parts.
        assert_eq!(needs(serde_json::json!("$params.id")), Needs::NONE);
    }

    #[test]
    fn builds_the_document() {
        let ex = exchange(
            &[
                ("content-type", "application/json"),
                ("cookie", "sessionid=abc; b=2"),
                ("x-a", "1"),
                ("x-a", "2"),
            ],
            br#"{"template_key":"contacts"}"#,
        );
        let doc = ex.document("Production");
        assert_eq!(doc["request"]["body"]["template_key"], "contacts");
        assert_eq!(doc["request"]["cookies"]["sessionid"], "abc");
        assert_eq!(doc["request"]["headers"]["x-a"], "1");
        assert_eq!(doc["query"]["sheet"], "1");
        assert_eq!(doc["query"]["x"], " y");
        assert_eq!(doc["response"]["body"], Value::Null);
    }

    #[test]
    fn form_bodies_and_invalid_json() {
        let doc = exchange(
            &[("content-type", "application/x-www-form-urlencoded")],
            b"a=1&b=two",
        )
        .document("P");
        assert_eq!(doc["request"]["body"]["b"], "two");
        let doc = exchange(&[("content-type", "application/json")], b"{not json").document("P");
        assert_eq!(doc["request"]["body"], Value::Null);
    }

    #[test]
    fn decompression_is_bounded() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&vec![b'a'; 10_000]).unwrap();
        let packed = gz.finish().unwrap();
        assert_eq!(decode(Some("gzip"), &packed, 20_000).unwrap().len(), 10_000);
        assert!(decode(Some("gzip"), &packed, 9_999).is_none());
        assert!(decode(Some("gzip"), b"garbage", 100).is_none());
    }

    #[test]
    fn layers_of_codings_are_bounded() {
        let mut data = b"{}".to_vec();
        for _ in 0..MAX_CODINGS + 1 {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&data).unwrap();
            data = gz.finish().unwrap();
        }
        let layers = |n: usize| vec!["gzip"; n].join(", ");
        let inner = decode(Some(&layers(1)), &data, 1 << 20).unwrap();
        assert_eq!(
            decode(Some(&layers(MAX_CODINGS)), &inner, 1 << 20).unwrap(),
            b"{}"
        );
        assert!(decode(Some(&layers(MAX_CODINGS + 1)), &data, 1 << 20).is_none());
    }

    #[test]
    fn the_budget_bounds_all_captures_and_is_given_back() {
        let budget = Budget::new(10);
        let mut a = Captured::with_budget(100, budget.clone());
        a.push(b"123456");
        let mut b = Captured::with_budget(100, budget.clone());
        b.push(b"123456");
        assert!(b.truncated && b.bytes.is_empty());
        assert_eq!(budget.used(), 6);
        drop(a);
        assert_eq!(budget.used(), 0);
        b.truncated = false;
        b.push(b"123456");
        assert_eq!(budget.used(), 6);
    }

    #[test]
    fn captured_stops_at_the_cap_and_lets_go() {
        let budget = Budget::new(100);
        let mut c = Captured::with_budget(4, budget.clone());
        c.push(b"abc");
        assert_eq!((c.bytes.as_slice(), budget.used()), (b"abc".as_slice(), 3));
        c.push(b"def");
        assert!(c.truncated && c.bytes.is_empty());
        assert_eq!(budget.used(), 0, "a cut copy holds nothing");
    }

    #[test]
    fn captured_lets_go_at_its_deadline() {
        let budget = Budget::new(100);
        let mut c = Captured::with_budget(64, budget.clone())
            .until(Instant::now() + std::time::Duration::from_millis(50));
        c.push(b"a");
        assert_eq!(budget.used(), 1);
        std::thread::sleep(std::time::Duration::from_millis(60));
        c.push(b"b");
        assert!(c.truncated && c.bytes.is_empty());
        assert_eq!(budget.used(), 0);
        c.push(b"c");
        assert_eq!(budget.used(), 0);
    }
}
