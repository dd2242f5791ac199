//! Recording: the exchanges the pipeline receives from the tap written to
//! rotating HAR files (`record:` in the config, or `taphook record`), for
//! `taphook explain`, `draft` and `test`. The pipeline builds each entry,
//! secrets replaced ([`super::redact`]), and hands it to a writer thread
//! through a bounded queue: a full queue drops the entry (counted,
//! `reason="record_queue_full"`), never waits.
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

use super::redact::Redactor;
use crate::config::Record;
use crate::derive::{Captured, Exchange};
use crate::metrics::Metrics;

/// Entries waiting for the writer.
const QUEUE: usize = 4096;

/// The end of a HAR document after its last entry.
const CLOSING: &[u8] = b"\n]}}\n";

/// The HAR entry of an exchange, secrets replaced.
pub fn entry(x: &Exchange, redact: &Redactor) -> Value {
    learn(x, redact);
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
    let mut url = format!("http://{host}{}", redact.url(&x.path));
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
        "cookies": request_cookies(&x.request_headers, redact),
        "headers": headers(&x.request_headers, redact, x.request_body.is_some()),
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
        let mut post = json!({"mimeType": content_type(&x.request_headers)});
        write_body(&mut post, &x.request_headers, body, redact);
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
        write_body(&mut content, &x.response_headers, body, redact);
    }
    // Bodies are written decoded, as browsers write them, so that their
    // secrets can be replaced; `Content-Encoding` is left out with them.
    json!({
        "startedDateTime": started,
        "time": 0,
        "request": request,
        "response": {
            "status": x.status,
            "statusText": "",
            "httpVersion": "HTTP/1.1",
            "cookies": response_cookies(&x.response_headers, redact),
            "headers": headers(&x.response_headers, redact, x.response_body.is_some()),
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

/// Reads every secret of the exchange first (cookies, secret headers and
/// fields of both sides, a page's hidden CSRF field), so that each is
/// replaced wherever it shows, even before the place that names it (an
/// answer's body echoing the session its `Set-Cookie` sets).
fn learn(x: &Exchange, redact: &Redactor) {
    let _ = headers(&x.request_headers, redact, false);
    let _ = headers(&x.response_headers, redact, false);
    if let Some(q) = &x.query {
        let _ = redact.pairs(q);
    }
    for (h, body) in [
        (&x.request_headers, &x.request_body),
        (&x.response_headers, &x.response_body),
    ] {
        if let Some(body) = body {
            write_body(&mut json!({}), h, body, redact);
        }
    }
}

/// The headers, values replaced; without `Content-Encoding` where the
/// body is written (decoded).
fn headers(map: &http::HeaderMap, redact: &Redactor, body_written: bool) -> Vec<Value> {
    map.iter()
        .filter(|(k, _)| !(body_written && *k == http::header::CONTENT_ENCODING))
        .map(|(k, v)| {
            let value = redact.header(k.as_str(), &String::from_utf8_lossy(v.as_bytes()));
            json!({"name": k.as_str(), "value": value})
        })
        .collect()
}

/// The request's cookies by name (HAR `cookies`), values replaced.
fn request_cookies(map: &http::HeaderMap, redact: &Redactor) -> Vec<Value> {
    map.get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| redact.cookies(&String::from_utf8_lossy(v.as_bytes())))
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect()
}

/// The cookies the response sets (HAR `cookies`), values replaced.
fn response_cookies(map: &http::HeaderMap, redact: &Redactor) -> Vec<Value> {
    map.get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| {
            let text = redact.set_cookie(&String::from_utf8_lossy(v.as_bytes()));
            let parsed = cookie::Cookie::parse(text).ok()?;
            let mut c = json!({"name": parsed.name(), "value": parsed.value()});
            if let Some(p) = parsed.path() {
                c["path"] = p.into();
            }
            if let Some(d) = parsed.domain() {
                c["domain"] = d.into();
            }
            if let Some(h) = parsed.http_only() {
                c["httpOnly"] = h.into();
            }
            if let Some(s) = parsed.secure() {
                c["secure"] = s.into();
            }
            Some(c)
        })
        .collect()
}

/// Writes a body's `text` (and `encoding`) into `at`: decoded; a body
/// that does not decode is left out, since its secrets could not be found.
fn write_body(at: &mut Value, headers: &http::HeaderMap, body: &Captured, redact: &Redactor) {
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let cap = body.cap.max(body.bytes.len());
    let Some(plain) = crate::derive::exchange::decode(encoding, &body.bytes, cap) else {
        at["comment"] = "the body did not decode, so it is not recorded".into();
        return;
    };
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    match body_text(&plain, &content_type, redact) {
        Some((text, encoding)) => {
            at["text"] = text.into();
            if let Some(e) = encoding {
                at["encoding"] = e.into();
            }
        }
        None => {
            at["comment"] = "JSON by its type that does not parse: not recorded".into();
        }
    }
}

/// A body as HAR text: JSON and forms field by field, other UTF-8 with
/// every secret seen replaced, anything else in base64. `None` for a body
/// that is JSON by its type but does not parse (its secret fields could
/// not be found).
fn body_text(
    bytes: &[u8],
    content_type: &str,
    redact: &Redactor,
) -> Option<(String, Option<&'static str>)> {
    if let Ok(mut v) = serde_json::from_slice::<Value>(bytes) {
        redact.json(&mut v);
        return Some((v.to_string(), None));
    }
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence == "application/json" || essence.ends_with("+json") || essence == "text/json" {
        return None;
    }
    let form = essence == "application/x-www-form-urlencoded";
    Some(match std::str::from_utf8(bytes) {
        Ok(text) if form || looks_like_form(text) => (
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(redact.pairs(text))
                .finish(),
            None,
        ),
        Ok(text) => (redact.text(text), None),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            Some("base64"),
        ),
    })
}

fn looks_like_form(text: &str) -> bool {
    text.contains('=') && !text.contains(char::is_whitespace) && !text.contains('<')
}

/// Hands entries to the writer thread.
pub struct Recorder {
    /// `None` once dropped: the writer then finishes the queue.
    tx: Option<SyncSender<Value>>,
    redact: Redactor,
    metrics: Arc<Metrics>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    /// Creates the directory and starts the writer.
    pub fn start(config: &Record, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        private_dir(&config.dir)?;
        let (tx, rx) = sync_channel::<Value>(QUEUE);
        let mut files = Files {
            dir: config.dir.clone(),
            max_bytes: config.max_bytes,
            current: None,
            seq: 0,
        };
        let echo = config.echo;
        let writer = std::thread::Builder::new()
            .name("taphook-record".into())
            .spawn(move || {
                for entry in rx {
                    if let Err(e) = files.write(&entry) {
                        tracing::warn!(error = %e, dir = %files.dir.display(), "cannot write the recording; entry lost");
                    } else if echo {
                        eprintln!("{}", files.line(&entry));
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            redact: Redactor::new(&config.redact, config.redact_mode),
            metrics,
            writer: Some(writer),
        })
    }

    /// Queues the exchange's entry; a full queue drops it (counted).
    pub fn record(&self, x: &Exchange) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(entry(x, &self.redact)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self
                .metrics
                .events_dropped
                .with_label_values(&["record_queue_full"])
                .inc(),
        }
    }
}

impl Drop for Recorder {
    /// Lets the writer finish what is queued, so a stop loses no entry.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
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
        // After a write that failed half-way, what it left past the new
        // closing is cut off.
        let len = c.file.stream_position()?;
        c.file.set_len(len)?;
        c.file.flush()?;
        c.end = end;
        c.entries += 1;
        Ok(())
    }

    /// What `taphook record` prints for an entry just written.
    fn line(&self, entry: &Value) -> String {
        let n = self.current.as_ref().map_or(0, |c| c.entries);
        let url = entry["request"]["url"].as_str().unwrap_or("");
        let path = url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or(url);
        format!(
            "  #{:<4} {} {} -> {}",
            n.saturating_sub(1),
            entry["request"]["method"].as_str().unwrap_or("?"),
            path,
            entry["response"]["status"]
        )
    }

    fn open(&mut self) -> std::io::Result<Current> {
        self.seq += 1;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let path = self.dir.join(format!("taphook-{stamp}-{}.har", self.seq));
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt as _;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?
        };
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

/// Creates a recording directory readable by its owner only (one that
/// exists keeps its permissions).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn is_recording(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("taphook-") && n.ends_with(".har"))
}

/// `taphook record`: what the command line gave.
pub struct Capture {
    pub upstream: String,
    pub listen: std::net::SocketAddr,
    pub out: PathBuf,
    pub redact_mode: String,
    pub max_body_bytes: String,
}

/// Runs a proxy that records every exchange, with no config file and no
/// routes, until Ctrl-C; then says what was recorded and what to run next.
pub fn capture(c: &Capture) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let out = std::path::absolute(&c.out)
        .with_context(|| format!("cannot use {} (--out)", c.out.display()))?;
    let scratch = Scratch::new()?;
    let rules_dir = scratch.0.join("rules");
    fs::create_dir_all(&rules_dir)?;
    let config_path = scratch.0.join("taphook.yaml");
    let quote = |s: &str| Value::String(s.to_string()).to_string();
    let yaml = format!(
        "listen: {listen}\nupstream: {upstream}\nadmin_listen: 127.0.0.1:0\nrules_dir: rules\ndata_dir: data\n\
         session_secret: {secret}\ncapture: {{max_body_bytes: {max}}}\nfunnel: {{stall_after: 0s}}\n\
         record: {{dir: {out}, all: true, max_bytes: 4GiB, redact_mode: {mode}}}\n",
        listen = quote(&c.listen.to_string()),
        upstream = quote(&c.upstream),
        max = quote(&c.max_body_bytes),
        out = quote(&out.display().to_string()),
        mode = quote(&c.redact_mode),
        secret = quote(&uuid::Uuid::new_v4().simple().to_string()),
    );
    fs::write(&config_path, yaml)?;
    let mut config = crate::config::Config::load(&config_path, &crate::rules::source::process_env)
        .map_err(|p| {
            anyhow::anyhow!(
                "{}",
                p.to_string()
                    .replace(&*config_path.to_string_lossy(), "taphook record")
            )
        })?;
    if let Some(r) = config.record.as_mut() {
        r.echo = true;
    }
    let rules = crate::rules::load_dir(&rules_dir, &crate::rules::source::process_env)
        .map_err(|p| anyhow::anyhow!("{p}"))?;
    let before = recordings(&out);
    eprintln!(
        "taphook record: http://{} -> {}\n  every exchange goes to {} (secrets replaced: {})\n  \
         point the importer's page or client at http://{} and go through one import; Ctrl-C when done",
        c.listen,
        c.upstream,
        out.display(),
        if c.redact_mode == "remove" { "REDACTED" } else { "pseudonyms" },
        c.listen
    );
    crate::app::run(
        config,
        rules,
        crate::app::Stop::Signals,
        crate::app::Launch::Fresh,
    )?;
    let written: Vec<PathBuf> = recordings(&out)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    let count: usize = written.iter().map(|p| entries_in(p)).sum();
    if written.is_empty() {
        eprintln!(
            "\nnothing was recorded: no request reached http://{}",
            c.listen
        );
        return Ok(());
    }
    let cwd = std::env::current_dir().ok();
    let shown: Vec<String> = written
        .iter()
        .map(|f| {
            cwd.as_deref()
                .and_then(|d| f.strip_prefix(d).ok())
                .unwrap_or(f)
                .display()
                .to_string()
        })
        .collect();
    let args: String = shown.iter().map(|f| format!(" --har {f}")).collect();
    eprintln!(
        "\nrecorded {count} exchange(s) to {}\nnext: taphook draft{args} > rules/importer.yaml\n      \
         (add --why to see what each route was drafted from)",
        shown.join(", ")
    );
    Ok(())
}

/// The recording files in `dir`.
fn recordings(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| is_recording(p))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The entries of a complete HAR file.
fn entries_in(path: &Path) -> usize {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["log"]["entries"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// A directory of `taphook record`'s own (its config, an empty rules
/// directory and a data directory), removed when done.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "taphook-record-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::redact::RedactMode;

    fn captured(bytes: &[u8]) -> Captured {
        let mut c = Captured::new(1 << 20);
        c.push(bytes);
        c
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        crate::traffic::har::header_map(pairs.iter().copied()).unwrap()
    }

    /// A login answer that sets the session cookie and echoes it in its
    /// body, a redirect carrying a token: every secret is found, whichever
    /// place names it first, and none is written.
    #[test]
    fn no_secret_of_an_entry_is_written_wherever_it_shows() {
        let redact = Redactor::with_key(
            &[],
            RedactMode::Pseudonym,
            crate::filter::HashKey::new(b"t"),
        );
        let x = Exchange {
            request_id: "r".into(),
            method: "POST".into(),
            path: "/login/S3ssion0nPath99/".into(),
            query: Some("next=%2Fhome&access_token=T0kenInQuery77".into()),
            request_headers: headers(&[
                ("content-type", "application/json"),
                ("x-session-id", "S3ssion0nPath99"),
            ]),
            request_body: Some(captured(br#"{"user": "ada", "password": "hunter2hunter2"}"#)),
            files: Vec::new(),
            status: 302,
            response_headers: headers(&[
                ("content-type", "text/html"),
                ("set-cookie", "sessionid=C00kieValue4242; Path=/; HttpOnly"),
                ("location", "/confirm?token=NewT0kenInLocation"),
            ]),
            response_body: Some(captured(
                b"<p>welcome C00kieValue4242</p><input type=hidden name=csrfmiddlewaretoken value=Csrf0nThePage55>",
            )),
            completed_at: std::time::SystemTime::now(),
            trace: None,
        };
        let text = entry(&x, &redact).to_string();
        for secret in [
            "S3ssion0nPath99",
            "T0kenInQuery77",
            "hunter2hunter2",
            "C00kieValue4242",
            "NewT0kenInLocation",
            "Csrf0nThePage55",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        // One value, one pseudonym: the cookie and the page's echo of it.
        let p = redact.secret("C00kieValue4242");
        assert_eq!(text.matches(&p).count(), 3, "{text}");
        assert!(
            text.contains("\"next\"") || text.contains("next=%2Fhome"),
            "{text}"
        );
    }
}
