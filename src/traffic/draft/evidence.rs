//! What one exchange shows the draft: its path template, the id-like
//! values it carries and the expression that reads each, the files it
//! uploads, and its answer's text for finding values handed out in HTML.
//! Bodies are read the way routes read them ([`Exchange::document`]), so
//! every expression the draft writes reads what it saw.

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use crate::derive::routes::is_identifier;
use crate::derive::Exchange;
use crate::rules::credentials::is_credential_name;

/// Methods that change state.
pub const STATE_CHANGING: &[&str] = &["POST", "PUT", "PATCH", "DELETE"];

/// Paths of static assets: never a lifecycle step.
const STATIC_EXTENSIONS: &[&str] = &[
    ".js", ".mjs", ".css", ".map", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".webp",
    ".woff", ".woff2", ".ttf", ".eot", ".otf",
];

/// Where a value was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Param,
    Query,
    RequestBody,
    Header,
    Cookie,
    /// The answer's JSON.
    ResponseBody,
    /// The answer's `Location` (not readable by an expression).
    Location,
}

impl Source {
    /// The request carries it (the client had it before this exchange).
    pub fn request_side(self) -> bool {
        !matches!(self, Source::ResponseBody | Source::Location)
    }
}

/// A place a value was read from, and the expression that reads it there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Place {
    pub source: Source,
    /// The field, parameter, header or cookie name (the last key of a
    /// JSON path).
    pub name: String,
    /// The expression, as a rules file writes it (`$params.task_id`,
    /// `{"hash": "$request.cookies.sessionid"}`); `None` where no
    /// expression reads it (a `Location` header).
    pub read: Option<Value>,
    /// A credential: read only through `hash`.
    pub credential: bool,
}

impl Place {
    /// How the draft's `--why` names it.
    pub fn describe(&self) -> String {
        let what = match self.source {
            Source::Param => "path parameter",
            Source::Query => "query parameter",
            Source::RequestBody => "request field",
            Source::Header => "header",
            Source::Cookie => "cookie",
            Source::ResponseBody => "answer field",
            Source::Location => "Location of the answer",
        };
        match self.source {
            Source::Location => what.to_string(),
            _ => format!("{what} `{}`", self.name),
        }
    }
}

/// A value carried by an exchange.
#[derive(Debug, Clone)]
pub struct Carried {
    pub value: String,
    pub place: Place,
}

/// One exchange as the draft sees it.
pub struct Seen<'a> {
    pub entry: usize,
    pub x: &'a Exchange,
    pub template: String,
    /// The request's parsed body (JSON or form), as routes read it.
    pub request_body: Value,
    /// The answer's parsed JSON, as routes read it.
    pub response_body: Value,
    /// The answer's text when it is not JSON (an HTML page): values
    /// handed out there are found by search.
    pub response_text: Option<String>,
    /// Id-like values, request side first.
    pub carried: Vec<Carried>,
    /// A static asset, a preflight or a not-modified answer.
    pub noise: bool,
}

impl Seen<'_> {
    pub fn changes_state(&self) -> bool {
        STATE_CHANGING.contains(&self.x.method.as_str())
    }

    /// Every value the request carries.
    pub fn request_values(&self) -> impl Iterator<Item = &Carried> {
        self.carried
            .iter()
            .filter(|c| c.place.source.request_side())
    }

    /// True when the answer hands out `value` (its JSON, its `Location`,
    /// or the text of its page: anywhere for a long value, in a link, a
    /// form's action or a field's value for a short one like `42`).
    pub fn hands_out(&self, value: &str) -> bool {
        self.carried
            .iter()
            .any(|c| !c.place.source.request_side() && c.value == value)
            || self
                .response_text
                .as_deref()
                .is_some_and(|t| in_text(t, value))
    }

    /// The first place among `places` that this exchange has a value at.
    pub fn value_at(&self, place: &Place) -> Option<&str> {
        self.carried
            .iter()
            .find(|c| c.place == *place)
            .map(|c| c.value.as_str())
    }

    /// The request uploads a file: a multipart file part, a CSV or
    /// spreadsheet (or bytes) sent as the body itself, or CSV text in the
    /// body or in one of its JSON fields.
    pub fn uploads(&self) -> bool {
        if !self.x.files.is_empty() {
            return true;
        }
        let ct = self
            .x
            .request_header("content-type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let body = self.x.request_body.as_ref().map(|b| b.bytes.as_slice());
        ct.starts_with("text/csv")
            || ct.contains("spreadsheet")
            || ct.contains("ms-excel")
            || ct.starts_with("text/tab-separated-values")
            || (ct.starts_with("application/octet-stream") && body.is_some_and(|b| !b.is_empty()))
            || (ct.starts_with("text/plain")
                && body.is_some_and(|b| csv_text(&String::from_utf8_lossy(b))))
            || json_csv(&self.request_body, 0)
    }

    /// The names of the files uploaded.
    pub fn filenames(&self) -> Vec<&str> {
        self.x.files.iter().map(|f| f.filename.as_str()).collect()
    }
}

/// Text that reads as CSV: two lines or more, the first two with the same
/// number (one or more) of the same delimiter.
pub fn csv_text(text: &str) -> bool {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let (Some(a), Some(b)) = (lines.next(), lines.next()) else {
        return false;
    };
    [',', ';', '\t']
        .iter()
        .any(|d| a.matches(*d).count() >= 1 && a.matches(*d).count() == b.matches(*d).count())
}

/// A JSON field (at the top or one level down) holding CSV text.
fn json_csv(v: &Value, depth: usize) -> bool {
    match v {
        Value::String(s) => s.contains('\n') && csv_text(s),
        Value::Object(m) if depth < 2 => m.values().any(|v| json_csv(v, depth + 1)),
        _ => false,
    }
}

/// True when `text` (a page) shows `value`: anywhere when it is long
/// enough to be unlikely by chance, else as a path segment or an
/// attribute's or parameter's whole value.
fn in_text(text: &str, value: &str) -> bool {
    if value.len() >= 6 {
        return text.contains(value);
    }
    // One character (`1`) shows up everywhere.
    if value.len() < 2 {
        return false;
    }
    [
        format!("/{value}/"),
        format!("/{value}\""),
        format!("/{value}'"),
        format!("/{value}?"),
        format!("={value}&"),
        format!("={value}\""),
        format!("\"{value}\""),
    ]
    .iter()
    .any(|p| text.contains(p.as_str()))
}

/// Reads every exchange, in order: templates use the values answers
/// handed out before.
pub fn read_all(recorded: &[super::Recorded]) -> Vec<Seen<'_>> {
    let mut handed_out: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(recorded.len());
    for r in recorded {
        let seen = read_one(r.entry, &r.exchange, &handed_out);
        handed_out.extend(
            seen.carried
                .iter()
                .filter(|c| !c.place.source.request_side())
                .map(|c| c.value.clone()),
        );
        out.push(seen);
    }
    out
}

fn read_one<'a>(entry: usize, x: &'a Exchange, handed_out: &HashSet<String>) -> Seen<'a> {
    let doc = x.document("");
    let (template, params) = template(&x.path, handed_out);
    let mut carried = Vec::new();
    for (name, value) in &params {
        carried.push(Carried {
            value: value.clone(),
            place: place(Source::Param, name, json!(format!("$params.{name}")), false),
        });
    }
    if let Some(Value::Object(q)) = doc.get("query") {
        fields(q, Source::Query, "$query", &mut carried);
    }
    let request_body = doc["request"]["body"].clone();
    if let Value::Object(m) = &request_body {
        walk_json(
            &Value::Object(m.clone()),
            Source::RequestBody,
            "$request.body",
            0,
            &mut carried,
        );
    }
    if let Some(Value::Object(h)) = doc["request"].get("headers") {
        for (name, v) in h {
            let Some(text) = v.as_str() else { continue };
            if carries_identity_header(name) && text.len() >= 8 {
                // The whole value, as the route reads and hashes it.
                carried.push(Carried {
                    value: text.to_string(),
                    place: place(
                        Source::Header,
                        name,
                        json!({"hash": format!("$request.headers.{name}")}),
                        true,
                    ),
                });
            }
        }
    }
    if let Some(Value::Object(c)) = doc["request"].get("cookies") {
        for (name, v) in c {
            let Some(text) = v.as_str() else { continue };
            if text.len() >= 8 && readable(name) {
                carried.push(Carried {
                    value: text.to_string(),
                    place: place(
                        Source::Cookie,
                        name,
                        json!({"hash": format!("$request.cookies.{name}")}),
                        true,
                    ),
                });
            }
        }
    }
    let response_body = doc["response"]["body"].clone();
    if !response_body.is_null() {
        walk_json(
            &response_body,
            Source::ResponseBody,
            "$response.body",
            0,
            &mut carried,
        );
    }
    if let Some(location) = x.response_headers.get(http::header::LOCATION) {
        let location = String::from_utf8_lossy(location.as_bytes());
        location_values(&location, &mut carried);
    }
    let response_text = response_body
        .is_null()
        .then(|| {
            x.response_body
                .as_ref()
                .map(|b| String::from_utf8_lossy(&b.bytes).into_owned())
        })
        .flatten();
    Seen {
        entry,
        x,
        template,
        noise: noise(x),
        request_body,
        response_body,
        response_text,
        carried,
    }
}

fn place(source: Source, name: &str, read: Value, credential: bool) -> Place {
    Place {
        source,
        name: name.to_string(),
        read: Some(read),
        credential,
    }
}

/// Static assets, preflights and not-modified answers.
fn noise(x: &Exchange) -> bool {
    let path = x.path.to_ascii_lowercase();
    x.method == "OPTIONS"
        || x.method == "HEAD"
        || x.status == 304
        || STATIC_EXTENSIONS.iter().any(|e| path.ends_with(e))
        || path.contains("/static/")
        || path.contains("/assets/")
        || path.ends_with("/favicon.ico")
        || path.contains("jsi18n")
}

/// A name a `$` path can read: no dots, spaces or `$`.
fn readable(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c == '.' || c == '$' || c.is_whitespace())
}

/// Headers that identify a client or a session.
fn carries_identity_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization"
        || (n.starts_with("x-") && (is_credential_name(&n) || n.contains("session")))
}

/// The id-like fields of a query or form, one level deep.
fn fields(m: &Map<String, Value>, source: Source, prefix: &str, out: &mut Vec<Carried>) {
    for (name, v) in m {
        if let Some(text) = scalar(v) {
            if readable(name) && identity(name, &text) {
                let credential = is_credential_name(name);
                out.push(Carried {
                    value: text,
                    place: place(source, name, read_of(prefix, name, credential), credential),
                });
            }
        }
    }
}

/// `$prefix.name`, hashed when it is a credential.
fn read_of(prefix: &str, path: &str, credential: bool) -> Value {
    let var = format!("{prefix}.{path}");
    if credential {
        json!({ "hash": var })
    } else {
        Value::String(var)
    }
}

/// JSON depth the draft looks into.
const MAX_DEPTH: usize = 4;

/// Array items looked at.
const MAX_ITEMS: usize = 10;

/// Every id-like leaf of a JSON value, objects and arrays alike.
fn walk_json(v: &Value, source: Source, at: &str, depth: usize, out: &mut Vec<Carried>) {
    if depth > MAX_DEPTH {
        return;
    }
    let children: Vec<(String, &Value)> = match v {
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| readable(k))
            .map(|(k, v)| (k.clone(), v))
            .collect(),
        Value::Array(items) => items
            .iter()
            .take(MAX_ITEMS)
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return,
    };
    for (key, child) in children {
        let path = format!("{at}.{key}");
        match scalar(child) {
            Some(text) => {
                if identity(&key, &text) {
                    let credential = is_credential_name(&key);
                    let read = if credential {
                        json!({ "hash": path })
                    } else {
                        Value::String(path.clone())
                    };
                    out.push(Carried {
                        value: text,
                        place: place(source, &key, read, credential),
                    });
                }
            }
            None => walk_json(child, source, &path, depth + 1, out),
        }
    }
}

/// The path segments and query values of a `Location`.
fn location_values(location: &str, out: &mut Vec<Carried>) {
    let path = location.split_once("://").map_or(location, |(_, rest)| {
        rest.find('/').map_or("", |i| &rest[i..])
    });
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let segments = path
        .split('/')
        .filter(|s| looks_like_id(s))
        .map(str::to_string);
    let query = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, v)| identity(k, v))
        .map(|(_, v)| v.into_owned());
    for value in segments.chain(query) {
        out.push(Carried {
            value,
            place: Place {
                source: Source::Location,
                name: "location".into(),
                read: None,
                credential: false,
            },
        });
    }
}

/// A string or number as text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Names that say "an id": `id`, `*_id`, `*Id`, `uuid`, `key`, tokens.
pub fn id_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "id"
        || lower.ends_with("_id")
        || lower.ends_with("-id")
        || name.ends_with("Id")
        || name.ends_with("ID")
        || lower.contains("uuid")
        || lower.ends_with("_key") && !lower.contains("template")
        || is_credential_name(&lower)
}

/// A value that identifies something: id-like by its shape, or by its
/// field's name (a number needs the name, or four digits).
pub fn identity(name: &str, value: &str) -> bool {
    if value.len() > 256 || value.is_empty() || value.contains(char::is_whitespace) {
        return false;
    }
    let digits_only = value.bytes().all(|b| b.is_ascii_digit());
    if digits_only {
        return id_name(name) || value.len() >= 4;
    }
    looks_like_id(value) || (id_name(name) && value.len() >= 4)
}

/// Numbers, UUIDs, long hex, and mixed letters-and-digits tokens of 8 or
/// more.
pub fn looks_like_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    let hex = seg.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (digits == seg.len())
        || (hex && seg.len() >= 16 && digits > 0)
        || (seg.len() >= 8
            && digits > 0
            && seg.bytes().any(|b| b.is_ascii_alphabetic())
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// The path's template, and its parameters with their values: ids and
/// values an earlier answer handed out become `{name}`, named after the
/// segment before them.
pub fn template(path: &str, handed_out: &HashSet<String>) -> (String, Vec<(String, String)>) {
    let mut out = String::new();
    let mut params: Vec<(String, String)> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        out.push('/');
        let known = seg.len() >= 4 && handed_out.contains(*seg);
        if !seg.is_empty() && (known || looks_like_id(seg)) {
            let mut name = i
                .checked_sub(1)
                .and_then(|p| segments.get(p))
                .map(|prev| {
                    let one = singular(prev);
                    if one.ends_with("_id") || one == "id" {
                        one
                    } else {
                        format!("{one}_id")
                    }
                })
                .filter(|n| is_identifier(n))
                .unwrap_or_else(|| "id".to_string());
            while params.iter().any(|(n, _)| *n == name) {
                name.push('2');
            }
            out.push_str(&format!("{{{name}}}"));
            params.push((name, seg.to_string()));
        } else {
            out.push_str(seg);
        }
    }
    (out, params)
}

pub fn singular(word: &str) -> String {
    let w = word.to_ascii_lowercase().replace('-', "_");
    for suffix in ["ches", "shes", "sses", "xes"] {
        if let Some(stem) = w.strip_suffix(suffix) {
            return format!("{stem}{}", &suffix[..suffix.len() - 2]);
        }
    }
    if w.ends_with("ss") || w.ends_with("us") {
        return w;
    }
    w.strip_suffix('s').map(str::to_string).unwrap_or(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_paths_become_params_named_after_their_collection() {
        let mut handed_out = HashSet::new();
        handed_out.insert("53511".to_string());
        let (t, p) = template("/v1/embeds/53511/upload", &handed_out);
        assert_eq!(t, "/v1/embeds/{embed_id}/upload");
        assert_eq!(p, [("embed_id".to_string(), "53511".to_string())]);
        let none = HashSet::new();
        assert_eq!(
            template(
                "/v1/batches/9f1c2a7e-3b4d-4e5f-8a6b-7c8d9e0f1a2b/rows/17",
                &none
            )
            .0,
            "/v1/batches/{batch_id}/rows/{row_id}"
        );
        assert_eq!(template("/api/v1/imports/", &none).0, "/api/v1/imports/");
        assert!(looks_like_id("imp8f3k2x9"));
        assert!(!looks_like_id("set-header"));
        assert!(!looks_like_id("v1"));
        assert_eq!(singular("batches"), "batch");
        assert_eq!(singular("sheet-operations"), "sheet_operation");
    }

    #[test]
    fn identity_needs_a_shape_or_a_name() {
        assert!(identity("task_id", "42"));
        assert!(!identity("page", "1"));
        assert!(identity("x", "3f2a1c9e-1111-4a4a-9b9b-0123456789ab"));
        assert!(!identity("status", "complete"));
        assert!(!identity("table", "people"));
    }
}
