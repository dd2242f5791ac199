//! `taphook test`: unit tests for routes, as `promtool test rules` is for
//! Prometheus rules. A test file (YAML) lists tests; each names its
//! traffic (a HAR file, or exchanges written inline) and the events it
//! expects, in order. The traffic goes through the code a running taphook
//! uses ([`crate::traffic::explain`]: derive, dedup, fan-out; sessions carried from
//! one exchange to the next), in process, with no network and no store.
//!
//! ```yaml
//! tests:
//!   - name: a user creates an embed
//!     har: ../../tests/data/har/oneschema-session.har   # relative to this file
//!     # or, inline:
//!     exchanges:
//!       - request: {method: POST, path: /v1/embeds, headers: {x-api-key: k}, body: {template_key: contacts}}
//!         response: {status: 200, body: {id: 7, status: initialized}}
//!     events:
//!       - event_type: embed_initialized
//!         embed_id: 7
//!         trigger_type: api
//!         data: {}                  # a subset of the event's data
//!         webhooks: [event_webhook] # exactly these receive it
//!       - event_type: embed_initialized
//!         duplicate_of: 0           # the same UUID as expected event 0: dropped
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::derive::{Captured, Exchange, FilePart};
use crate::rules::source::{process_env, Document};
use crate::rules::Rules;
use crate::store::session_key;
use crate::traffic::explain::{explain, EventReport, ExchangeReport};
use crate::traffic::har::{self, Recorded};

/// A test file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tests: Vec<Test>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Test {
    name: String,
    #[serde(default)]
    har: Option<PathBuf>,
    #[serde(default)]
    exchanges: Vec<Inline>,
    #[serde(default)]
    environment_name: Option<String>,
    events: Vec<Expected>,
}

/// An exchange written in the test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inline {
    request: InlineRequest,
    #[serde(default)]
    response: InlineResponse,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InlineRequest {
    #[serde(default = "get")]
    method: String,
    /// The path, with its query if any.
    path: String,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    body: Option<Value>,
    /// Multipart files: a list of file names (the part's field is
    /// `file`) or `{field, filename, content_type}`, or a map of field
    /// to file name.
    #[serde(default)]
    files: InlineFiles,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum InlineFiles {
    List(Vec<InlineFile>),
    ByField(Map<String, Value>),
}

impl Default for InlineFiles {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

impl InlineFiles {
    fn parts(&self) -> Result<Vec<FilePart>, String> {
        match self {
            Self::List(files) => Ok(files.iter().map(InlineFile::part).collect()),
            Self::ByField(m) => m
                .iter()
                .map(|(field, name)| match name {
                    Value::String(filename) => Ok(FilePart {
                        field: field.clone(),
                        filename: filename.clone(),
                        content_type: None,
                    }),
                    _ => Err(format!("files.{field}: expected a file name")),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum InlineFile {
    Name(String),
    Part {
        /// The part's name (`name` as in a HAR's `params`).
        #[serde(default = "file_field", alias = "name")]
        field: String,
        filename: String,
        #[serde(default)]
        content_type: Option<String>,
    },
}

fn file_field() -> String {
    "file".into()
}

impl InlineFile {
    fn part(&self) -> FilePart {
        match self {
            Self::Name(filename) => FilePart {
                field: file_field(),
                filename: filename.clone(),
                content_type: None,
            },
            Self::Part {
                field,
                filename,
                content_type,
            } => FilePart {
                field: field.clone(),
                filename: filename.clone(),
                content_type: content_type.clone(),
            },
        }
    }
}

/// An exchange without `response` is a 200 with an empty body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InlineResponse {
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    body: Option<Value>,
}

impl Default for InlineResponse {
    fn default() -> Self {
        Self {
            status: ok(),
            headers: Map::new(),
            body: None,
        }
    }
}

fn get() -> String {
    "GET".into()
}

fn ok() -> u16 {
    200
}

/// An event a test expects.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    event_type: String,
    #[serde(default)]
    embed_id: Option<Value>,
    #[serde(default)]
    trigger_type: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    webhooks: Option<Vec<String>>,
    #[serde(default)]
    duplicate_of: Option<usize>,
}

/// What running the test files found.
pub struct Outcome {
    pub passed: usize,
    pub failed: usize,
    /// What to print.
    pub report: String,
}

/// Runs every test of every file in `files` against `rules`.
pub fn run(rules: &Rules, files: &[PathBuf]) -> Result<Outcome, String> {
    let mut outcome = Outcome {
        passed: 0,
        failed: 0,
        report: String::new(),
    };
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let doc = Document::parse(path, &text, &process_env).map_err(|p| p.to_string())?;
        let file: File = serde_path_to_error::deserialize(&doc.value).map_err(|e| {
            let pointer = format!(
                "/{}",
                e.path()
                    .to_string()
                    .replace(['.', '['], "/")
                    .replace(']', "")
            );
            format!(
                "{}:{}: {} ({})",
                path.display(),
                doc.line(&pointer),
                e.inner(),
                e.path()
            )
        })?;
        for (i, test) in file.tests.iter().enumerate() {
            let at = format!("{}:{}", path.display(), doc.line(&format!("/tests/{i}")));
            let recorded = traffic(test, path).map_err(|e| format!("{at}: {}: {e}", test.name))?;
            let env = test.environment_name.as_deref().unwrap_or("Production");
            let reports = explain(rules, &recorded, env);
            match check(test, &reports) {
                None => {
                    outcome.passed += 1;
                    let _ = writeln!(outcome.report, "ok   {at} {}", test.name);
                }
                Some(why) => {
                    outcome.failed += 1;
                    let _ = writeln!(outcome.report, "FAIL {at} {}\n{why}", test.name);
                }
            }
        }
    }
    let _ = writeln!(
        outcome.report,
        "{} passed, {} failed",
        outcome.passed, outcome.failed
    );
    Ok(outcome)
}

/// The test's exchanges: its HAR's (relative to the test file), then its
/// inline ones.
fn traffic(test: &Test, file: &Path) -> Result<Vec<Recorded>, String> {
    let mut out = Vec::new();
    if let Some(har_path) = &test.har {
        let full = file.parent().unwrap_or(Path::new(".")).join(har_path);
        let text = std::fs::read_to_string(&full)
            .map_err(|e| format!("cannot read {}: {e}", full.display()))?;
        out = har::read(&text).map_err(|e| format!("{}: {e}", full.display()))?;
    }
    let first = out.len();
    for (i, x) in test.exchanges.iter().enumerate() {
        out.push(Recorded {
            entry: first + i,
            exchange: inline(x).map_err(|e| format!("exchanges[{i}]: {e}"))?,
        });
    }
    Ok(out)
}

fn inline(x: &Inline) -> Result<Exchange, String> {
    let (path, query) = match x.request.path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (x.request.path.clone(), None),
    };
    let mut request_headers = headers(&x.request.headers)?;
    let request_body = body(x.request.body.as_ref(), &mut request_headers);
    let mut response_headers = headers(&x.response.headers)?;
    let response_body = body(x.response.body.as_ref(), &mut response_headers);
    Ok(Exchange {
        request_id: "test".into(),
        method: x.request.method.to_ascii_uppercase(),
        path,
        query,
        request_headers,
        request_body,
        files: x.request.files.parts()?,
        status: x.response.status,
        response_headers,
        response_body,
        completed_at: std::time::SystemTime::now(),
        trace: None,
    })
}

fn headers(map: &Map<String, Value>) -> Result<HeaderMap, String> {
    let text: Vec<(&str, String)> = map
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k.as_str(), s.clone()),
            other => (k.as_str(), other.to_string()),
        })
        .collect();
    har::header_map(text.iter().map(|(k, v)| (*k, v.as_str())))
}

/// A body: text as it is, anything else as JSON (with a JSON content type
/// unless the headers give one).
fn body(value: Option<&Value>, headers: &mut HeaderMap) -> Option<Captured> {
    Some(match value? {
        Value::String(s) => har::captured(s.as_bytes()),
        v => {
            headers
                .entry(http::header::CONTENT_TYPE)
                .or_insert(HeaderValue::from_static("application/json"));
            har::captured(v.to_string().as_bytes())
        }
    })
}

/// `None` when the derived events are the expected ones; else what differs.
fn check(test: &Test, reports: &[ExchangeReport]) -> Option<String> {
    let derived: Vec<(&ExchangeReport, &EventReport)> = reports
        .iter()
        .flat_map(|r| r.events.iter().map(move |e| (r, e)))
        .collect();
    let mut problems = Vec::new();
    for (i, want) in test.events.iter().enumerate() {
        match derived.get(i) {
            None => problems.push(format!(
                "  expected event {i} ({}) did not come{}",
                want.event_type,
                near_misses(reports, &want.event_type)
            )),
            Some((x, got)) => {
                let diffs = differences(want, got, &derived);
                if !diffs.is_empty() {
                    problems.push(side_by_side(&described(i, x, got), &diffs));
                }
            }
        }
    }
    for (i, (x, got)) in derived.iter().enumerate().skip(test.events.len()) {
        problems.push(format!("  {} was not expected", described(i, x, got)));
    }
    (!problems.is_empty()).then(|| problems.join("\n"))
}

/// (field, expected, derived) for every field that differs.
fn differences(
    want: &Expected,
    got: &EventReport,
    all: &[(&ExchangeReport, &EventReport)],
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    if want.event_type != got.event_type {
        out.push((
            "event_type".into(),
            want.event_type.clone(),
            got.event_type.clone(),
        ));
    }
    if let Some(id) = &want.embed_id {
        if !same_id(id, &got.embed_id) {
            out.push(("embed_id".into(), id.to_string(), got.embed_id.to_string()));
        }
    }
    if let Some(t) = &want.trigger_type {
        if *t != got.trigger_type {
            out.push(("trigger_type".into(), t.clone(), got.trigger_type.clone()));
        }
    }
    if let Some(data) = &want.data {
        subset("data", data, &got.data, &mut out);
    }
    if let Some(hooks) = &want.webhooks {
        let (mut a, mut b) = (hooks.clone(), got.webhooks.clone());
        a.sort();
        b.sort();
        if a != b {
            out.push(("webhooks".into(), format!("{a:?}"), format!("{b:?}")));
        }
    }
    let duplicate_of = all
        .iter()
        .position(|(_, e)| e.uuid == got.uuid)
        .filter(|_| got.duplicate);
    if want.duplicate_of != duplicate_of {
        let show = |d: Option<usize>| {
            d.map_or("not a duplicate".to_string(), |i| {
                format!("duplicate of event {i}")
            })
        };
        out.push((
            "duplicate_of".into(),
            show(want.duplicate_of),
            show(duplicate_of),
        ));
    }
    out
}

/// `42` and `"42"` are the same session, as the store keys them.
fn same_id(a: &Value, b: &Value) -> bool {
    a == b || session_key(a).is_some_and(|k| Some(k) == session_key(b))
}

/// Every key of `want` (recursively for objects) is in `got` with the same value.
fn subset(at: &str, want: &Value, got: &Value, out: &mut Vec<(String, String, String)>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                subset(
                    &format!("{at}.{k}"),
                    v,
                    g.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if want == got => {}
        _ => out.push((at.to_string(), want.to_string(), got.to_string())),
    }
}

/// A derived event as a failure names it: its position, its type, its
/// route and the exchange it came from.
fn described(i: usize, x: &ExchangeReport, got: &EventReport) -> String {
    format!(
        "event {i} ({}, route {}, from #{} {} {} -> {})",
        got.event_type, got.route, x.entry, x.method, x.path, x.status
    )
}

fn side_by_side(what: &str, diffs: &[(String, String, String)]) -> String {
    let width = diffs
        .iter()
        .map(|(f, _, _)| f.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let col = diffs
        .iter()
        .map(|(_, e, _)| e.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(8, 60);
    let mut s = format!(
        "  {what}:\n    {:<width$}  {:<col$}  derived\n",
        "", "expected"
    );
    for (field, e, g) in diffs {
        let _ = writeln!(s, "    {field:<width$}  {e:<col$}  {g}");
    }
    s.trim_end().to_string()
}

/// For an expected event that did not come: the routes for its event type
/// whose path matched an exchange, and why each did not fire.
fn near_misses(reports: &[ExchangeReport], event_type: &str) -> String {
    let mut lines = Vec::new();
    for r in reports {
        for m in r.near_misses.iter().filter(|m| m.event == event_type) {
            lines.push(format!(
                "    #{} {} {} -> {}: route {}: {}",
                r.entry, r.method, r.path, r.status, m.route, m.reason
            ));
        }
    }
    if lines.is_empty() {
        format!("; no route for `{event_type}` matched the path of any exchange")
    } else {
        format!("; routes for it whose path matched:\n{}", lines.join("\n"))
    }
}
