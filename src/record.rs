//! Recording: the exchanges the pipeline receives from the tap written to
//! rotating HAR files (`record:` in the config), for `taphook explain`,
//! `draft` and `test`. The pipeline builds each entry, secrets redacted,
//! and hands it to a writer thread through a bounded queue: a full queue
//! drops the entry (counted, `reason="record_queue_full"`), never waits.
//!
//! Each file is a complete HAR after every entry: the entries array and the
//! document are closed after each one, and the next entry is written over
//! that closing. A file is closed at a quarter of `max_bytes`; the oldest
//! files are deleted while all of them together are larger than that.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::config::Record;
use crate::derive::{Captured, Exchange};
use crate::metrics::Metrics;

/// Entries waiting for the writer.
const QUEUE: usize = 4096;

/// The end of a HAR document after its last entry.
const CLOSING: &[u8] = b"\n]}}\n";

/// Headers always redacted.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Words that make a query parameter or JSON field a secret.
const SECRET_WORDS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "secret",
    "apikey",
    "api_key",
    "api-key",
    "jwt",
    "credential",
    "authorization",
];

pub const REDACTED: &str = "REDACTED";

/// Which names are secrets.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Lower-case names redacted besides the built-in ones.
    extra: Vec<String>,
}

impl Redactor {
    pub fn new(extra: &[String]) -> Self {
        Self {
            extra: extra.iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    fn header(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        SECRET_HEADERS.contains(&n.as_str()) || self.field(&n)
    }

    fn field(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        SECRET_WORDS.iter().any(|w| n.contains(w)) || self.extra.contains(&n)
    }

    /// The fields of a query string or form body, secret values replaced.
    fn pairs(&self, encoded: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(encoded.as_bytes())
            .map(|(k, v)| {
                let v = if self.field(&k) {
                    REDACTED.into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect()
    }

    /// A JSON value with every secret field's value replaced.
    fn json(&self, v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if self.field(k) {
                        *v = Value::String(REDACTED.into());
                    } else {
                        self.json(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.json(i)),
            _ => {}
        }
    }
}

/// The HAR entry of an exchange, secrets redacted.
pub fn entry(x: &Exchange, redact: &Redactor) -> Value {
    let host = x
        .request_headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("importer");
    let query = x
        .query
        .as_deref()
        .map(|q| redact.pairs(q))
        .unwrap_or_default();
    let mut url = format!("http://{host}{}", x.path);
    if !query.is_empty() {
        url.push('?');
        url.push_str(
            &form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&query)
                .finish(),
        );
    }
    let completed = x
        .completed_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let started = humantime::format_rfc3339_millis(UNIX_EPOCH + completed).to_string();
    let mut request = json!({
        "method": x.method,
        "url": url,
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": headers(&x.request_headers, redact),
        "queryString": query.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
        "headersSize": -1,
        "bodySize": x.request_body.as_ref().map_or(0, |b| b.bytes.len()),
    });
    let content_type = |h: &http::HeaderMap| {
        h.get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if let Some(body) = &x.request_body {
        let (text, encoding) = body_text(body, redact);
        let mut post = json!({"mimeType": content_type(&x.request_headers), "text": text});
        if let Some(e) = encoding {
            post["encoding"] = e.into();
        }
        request["postData"] = post;
    } else if !x.files.is_empty() {
        request["postData"] = json!({
            "mimeType": content_type(&x.request_headers),
            "params": x.files.iter().map(|f| json!({"name": f.field, "fileName": f.filename, "contentType": f.content_type})).collect::<Vec<_>>(),
        });
    }
    let mut content = json!({
        "size": x.response_body.as_ref().map_or(0, |b| b.bytes.len()),
        "mimeType": content_type(&x.response_headers),
    });
    if let Some(body) = &x.response_body {
        let (text, encoding) = body_text(body, redact);
        content["text"] = text.into();
        if let Some(e) = encoding {
            content["encoding"] = e.into();
        }
    }
    // The bodies taphook keeps are as they came: a compressed one is
    // written in base64 with its `Content-Encoding` header kept.
    json!({
        "startedDateTime": started,
        "time": 0,
        "request": request,
        "response": {
            "status": x.status,
            "statusText": "",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": headers(&x.response_headers, redact),
            "content": content,
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
        },
        "cache": {},
        "timings": {"send": 0, "wait": 0, "receive": 0},
        "_taphook": {"request_id": x.request_id, "truncated": x.request_body.as_ref().is_some_and(|b| b.truncated) || x.response_body.as_ref().is_some_and(|b| b.truncated)},
    })
}

fn headers(map: &http::HeaderMap, redact: &Redactor) -> Vec<Value> {
    map.iter()
        .map(|(k, v)| {
            let value = if redact.header(k.as_str()) {
                REDACTED.to_string()
            } else {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            };
            json!({"name": k.as_str(), "value": value})
        })
        .collect()
}

/// A body as HAR text: JSON with secrets redacted, other UTF-8 as it is,
/// anything else in base64.
fn body_text(body: &Captured, redact: &Redactor) -> (String, Option<&'static str>) {
    if let Ok(mut v) = serde_json::from_slice::<Value>(&body.bytes) {
        redact.json(&mut v);
        return (v.to_string(), None);
    }
    match std::str::from_utf8(&body.bytes) {
        Ok(text) => (redact_form(text, redact), None),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&body.bytes),
            Some("base64"),
        ),
    }
}

/// A form body's secret fields redacted; other text as it is.
fn redact_form(text: &str, redact: &Redactor) -> String {
    let looks_like_form = text.contains('=') && !text.contains(char::is_whitespace);
    if !looks_like_form {
        return text.to_string();
    }
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(redact.pairs(text))
        .finish()
}

/// Hands entries to the writer thread.
pub struct Recorder {
    tx: SyncSender<Value>,
    redact: Redactor,
    pub all: bool,
    metrics: Arc<Metrics>,
}

impl Recorder {
    /// Creates the directory and starts the writer.
    pub fn start(config: &Record, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        fs::create_dir_all(&config.dir)?;
        let (tx, rx) = sync_channel::<Value>(QUEUE);
        let mut files = Files {
            dir: config.dir.clone(),
            max_bytes: config.max_bytes,
            current: None,
            seq: 0,
        };
        std::thread::Builder::new()
            .name("taphook-record".into())
            .spawn(move || {
                for entry in rx {
                    if let Err(e) = files.write(&entry) {
                        tracing::warn!(error = %e, dir = %files.dir.display(), "cannot write the recording; entry lost");
                    }
                }
            })?;
        Ok(Self {
            tx,
            redact: Redactor::new(&config.redact),
            all: config.all,
            metrics,
        })
    }

    /// Queues the exchange's entry; a full queue drops it (counted).
    pub fn record(&self, x: &Exchange) {
        match self.tx.try_send(entry(x, &self.redact)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self
                .metrics
                .events_dropped
                .with_label_values(&["record_queue_full"])
                .inc(),
        }
    }
}

/// The recording's files.
struct Files {
    dir: PathBuf,
    max_bytes: u64,
    current: Option<Current>,
    seq: u64,
}

struct Current {
    file: File,
    /// Where the closing starts: the next entry is written there.
    end: u64,
    entries: u64,
}

impl Files {
    fn write(&mut self, entry: &Value) -> std::io::Result<()> {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.end >= self.max_bytes / 4)
        {
            self.current = None;
        }
        if self.current.is_none() {
            self.current = Some(self.open()?);
            self.prune()?;
        }
        let c = self.current.as_mut().expect("opened above");
        let text = serde_json::to_vec(entry)?;
        c.file.seek(SeekFrom::Start(c.end))?;
        if c.entries > 0 {
            c.file.write_all(b",\n")?;
        }
        c.file.write_all(&text)?;
        let end = c.file.stream_position()?;
        c.file.write_all(CLOSING)?;
        c.file.flush()?;
        c.end = end;
        c.entries += 1;
        Ok(())
    }

    fn open(&mut self) -> std::io::Result<Current> {
        self.seq += 1;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let path = self.dir.join(format!("taphook-{stamp}-{}.har", self.seq));
        let mut file = File::create(&path)?;
        let head = json!({"name": "taphook", "version": env!("CARGO_PKG_VERSION")});
        writeln!(
            file,
            "{{\"log\":{{\"version\":\"1.2\",\"creator\":{head},\"entries\":["
        )?;
        let end = file.stream_position()?;
        file.write_all(CLOSING)?;
        Ok(Current {
            file,
            end,
            entries: 0,
        })
    }

    /// Deletes the oldest recordings while all of them are over the budget.
    fn prune(&self) -> std::io::Result<()> {
        let mut files: Vec<(SystemTime, u64, PathBuf)> = fs::read_dir(&self.dir)?
            .flatten()
            .filter(|e| is_recording(&e.path()))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        files.sort();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        // The newest (the one just opened) is never deleted.
        for (_, len, path) in files.iter().take(files.len().saturating_sub(1)) {
            if total <= self.max_bytes {
                break;
            }
            fs::remove_file(path)?;
            total -= len;
        }
        Ok(())
    }
}

fn is_recording(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("taphook-") && n.ends_with(".har"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_fields_are_redacted_at_any_depth() {
        let mut v = json!({"template_key": "c", "embed_user_jwt": "a.b.c", "user": {"password": "p", "name": "n"},
                   "items": [{"api_key": "k"}], "x-tenant": "t"});
        Redactor::new(&["X-Tenant".to_string()]).json(&mut v);
        assert_eq!(
            v,
            json!({"template_key": "c", "embed_user_jwt": "REDACTED", "user": {"password": "REDACTED", "name": "n"},
                   "items": [{"api_key": "REDACTED"}], "x-tenant": "REDACTED"})
        );
    }
}
