//! `record:` and `taphook record`: the proxy's exchanges written to HAR
//! files, each secret replaced by a pseudonym that is the same wherever
//! the value shows, that `taphook explain` reads back into the same
//! events (sessions keyed by a cookie included).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Setup, Stack};
use serde_json::{json, Value};
use taphook::demo::multipart_file;

/// The recording's files, oldest first.
fn recordings(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Every entry of every file, once `n` entries are there (each file is a
/// complete HAR after every entry).
async fn entries(dir: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A file is a complete HAR after every entry; read while an entry
        // is being written, it is not yet: read it again.
        let read: Option<Vec<Value>> = recordings(dir)
            .iter()
            .map(|f| {
                let har: Value = serde_json::from_str(&std::fs::read_to_string(f).ok()?).ok()?;
                har["log"]["entries"].as_array().cloned()
            })
            .collect::<Option<Vec<_>>>()
            .map(|files| files.into_iter().flatten().collect());
        match read {
            Some(all) if all.len() >= n => return all,
            Some(all) if Instant::now() > deadline => return all,
            None if Instant::now() > deadline => {
                panic!("a recording in {} is not a HAR", dir.display())
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `taphook explain --json` of a recording with a rules directory.
fn explain_json(har: &Path, rules: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["explain", "--json", "--har"])
        .arg(har)
        .arg("--rules")
        .arg(rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn is_pseudonym(v: &str) -> bool {
    v.strip_prefix("redacted:")
        .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The pseudonym that follows `at` in `text`.
fn pseudonym_in<'t>(text: &'t str, at: &str) -> &'t str {
    let start = text.find(at).map(|i| i + at.len()).expect(at);
    let v = &text[start..start + 17];
    // `:` is written %3A in a query string.
    let v = if text[start..].starts_with("redacted%3A") {
        &text[start..start + 19]
    } else {
        v
    };
    assert!(
        is_pseudonym(&v.replace("%3A", ":")),
        "{at} is followed by {v}"
    );
    v
}

fn header<'a>(list: &'a Value, name: &str) -> Option<&'a str> {
    list.as_array()?
        .iter()
        .find(|h| h["name"] == name)
        .and_then(|h| h["value"].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tapped_exchanges_are_recorded_redacted_and_explain_reads_them_back() {
    let stack = Stack::start(Setup {
        config: "record:\n  dir: rec\n  max_bytes: 1MiB\n  redact: [x-tenant]\n",
        ..Default::default()
    })
    .await;
    let r = stack
        .client
        .post(stack.url("/v1/embeds?access_token=t0k&page=1"))
        .header("x-api-key", "key-123")
        .header("authorization", "Bearer a.b.c")
        .header("x-tenant", "acme")
        .json(
            &json!({"template_key": "contacts", "event_webhook_keys": ["event_webhook"],
                      "embed_user_jwt": "h.p.s", "user": {"password": "hunter2", "name": "Ada"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    let (ct, body) = multipart_file("contacts.csv", "name,email\nAda,ada@example.com\n");
    stack
        .post(&format!("/v1/embeds/{id}/upload"), &ct, body)
        .await;
    // No route could match this one: not recorded without `record.all`.
    stack.ping(1).await;

    let dir = stack.dir.path().join("rec");
    let got = entries(&dir, 2).await;
    assert_eq!(
        got.len(),
        2,
        "the two tapped exchanges, not the ping: {got:#?}"
    );
    let create = &got[0]["request"];
    assert_eq!(create["method"], "POST");
    let url = create["url"].as_str().unwrap();
    let token = pseudonym_in(url, "access_token=");
    assert!(url.ends_with("&page=1"), "{url}");
    for name in ["x-api-key", "x-tenant"] {
        assert!(
            header(&create["headers"], name).is_some_and(is_pseudonym),
            "{name}: {create}"
        );
    }
    assert!(header(&create["headers"], "authorization")
        .is_some_and(|a| a.strip_prefix("Bearer ").is_some_and(is_pseudonym)));
    let sent: Value = serde_json::from_str(create["postData"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(sent["template_key"], "contacts");
    assert!(sent["embed_user_jwt"].as_str().is_some_and(is_pseudonym));
    assert_eq!(sent["user"]["name"], "Ada");
    assert!(sent["user"]["password"].as_str().is_some_and(is_pseudonym));
    let text = got[0].to_string();
    for secret in ["t0k", "key-123", "a.b.c", "acme", "h.p.s", "hunter2"] {
        assert!(
            !text.contains(&format!("\"{secret}\"")) && !text.contains(&format!("={secret}&")),
            "{secret} in {text}"
        );
    }
    assert!(!token.is_empty());
    let answer: Value =
        serde_json::from_str(got[0]["response"]["content"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(answer["id"], id);
    assert_eq!(
        got[1]["request"]["postData"]["params"][0]["fileName"],
        "contacts.csv"
    );

    // The recording through the same rules gives the same two events.
    let file = recordings(&dir).pop().unwrap();
    let reports = explain_json(&file, &stack.rules_dir());
    let events: Vec<(&str, &str)> = reports
        .iter()
        .flat_map(|r| r["events"].as_array().unwrap())
        .map(|e| {
            (
                e["event_type"].as_str().unwrap(),
                e["trigger_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [("embed_initialized", "api"), ("file_uploaded", "user")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_all_keeps_untapped_exchanges_and_rotates_within_max_bytes() {
    let stack = Stack::start(Setup {
        config: "record:\n  dir: rec\n  all: true\n  max_bytes: 64KiB\n",
        ..Default::default()
    })
    .await;
    for i in 0..200 {
        stack.ping(i).await;
    }
    let dir = stack.dir.path().join("rec");
    // Files close at 16 KiB; the oldest go once all are over 64 KiB.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_seen = String::new();
    while Instant::now() < deadline {
        let newest = recordings(&dir)
            .pop()
            .map(|f| std::fs::read_to_string(f).unwrap());
        if let Some(text) = newest {
            if text.contains("_fixtures/empty?i=199") {
                last_seen = text;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!last_seen.is_empty(), "the last ping was recorded");
    let files = recordings(&dir);
    assert!(files.len() >= 2, "rotated: {files:?}");
    let total: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(
        total <= 64 * 1024 + 16 * 1024,
        "within max_bytes (+ the open file): {total}"
    );
    for f in &files {
        let har: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        assert_eq!(har["log"]["version"], "1.2");
    }
    assert_eq!(
        stack
            .metric("taphook_events_dropped_total{reason=\"record_queue_full\"}")
            .await,
        0.0
    );
}

/// Waits until something accepts connections on `addr`.
async fn wait_listening(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `taphook record`: no config, no routes; every exchange is recorded,
/// one secret value is one pseudonym wherever it shows (cookie, header,
/// JSON field, the answer echoing it), cookies are kept by name, and
/// Ctrl-C says what was recorded and what to run next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taphook_record_captures_every_exchange_and_says_what_next() {
    let importer = taphook::demo::importer::ReferenceImporter::start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = taphook::demo::free_port().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let stderr = std::fs::File::create(dir.path().join("record.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["record", "--upstream", &importer.url(), "--listen"])
        .arg(addr.to_string())
        .arg("--out")
        .arg(dir.path().join("out"))
        .current_dir(dir.path())
        .stderr(stderr)
        .spawn()
        .unwrap();
    wait_listening(addr).await;
    let client = common::client();
    let (session, csrf) = ("s3cr3t-session-value-01", "csrf-value-0123456789");
    let cookie = format!("sessionid={session}; theme=dark");
    let r = client
        .get(format!("http://{addr}/_fixtures/empty?i=1"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = client
        .post(format!("http://{addr}/_fixtures/echo"))
        .header("cookie", &cookie)
        .header("x-csrftoken", csrf)
        .json(&json!({"session": session, "csrf_token": csrf, "rows": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("http://{addr}/v1/embeds"))
        .json(&json!({"template_key": "contacts"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "taphook record did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(dir.path().join("record.log")).unwrap();
    assert!(exit.success(), "{log}");
    let files = recordings(&dir.path().join("out"));
    assert_eq!(files.len(), 1, "{log}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        log.contains(&format!(
            "recorded 3 exchange(s) to out/{name}\nnext: taphook draft --har out/{name}"
        )),
        "{log}"
    );
    assert!(
        log.contains("  #0    GET /_fixtures/empty?i=1 -> 204"),
        "{log}"
    );

    let text = std::fs::read_to_string(&files[0]).unwrap();
    for secret in [session, csrf] {
        assert!(!text.contains(secret), "{secret} was written: {text}");
    }
    let har: Value = serde_json::from_str(&text).unwrap();
    let entries = har["log"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    let cookies = &entries[0]["request"]["cookies"];
    assert_eq!(cookies[0]["name"], "sessionid");
    assert_eq!(cookies[1]["name"], "theme");
    let p_session = cookies[0]["value"].as_str().unwrap();
    assert!(is_pseudonym(p_session), "{cookies}");
    let echo = &entries[1];
    let p_csrf = header(&echo["request"]["headers"], "x-csrftoken").unwrap();
    assert!(is_pseudonym(p_csrf));
    assert_ne!(p_session, p_csrf);
    assert_eq!(echo["request"]["cookies"][0]["value"], p_session);
    for body in [
        &echo["request"]["postData"]["text"],
        &echo["response"]["content"]["text"],
    ] {
        let v: Value = serde_json::from_str(body.as_str().unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"session": p_session, "csrf_token": p_csrf, "rows": 3})
        );
    }

    // The recording drafts, and a session keyed by the cookie reads it
    // back as one session.
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("r.yaml"),
        r#"routes:
  - {name: a, event: a, method: GET, path: /_fixtures/empty, status: 204, session: {"hash": "$request.cookies.sessionid"}}
  - {name: b, event: b, method: POST, path: /_fixtures/echo, session: {"hash": "$request.cookies.sessionid"}}
"#,
    )
    .unwrap();
    let reports = explain_json(&files[0], &rules);
    let ids: Vec<&Value> = reports
        .iter()
        .flat_map(|r| r["events"].as_array().unwrap())
        .map(|e| &e["embed_id"])
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[0].is_string() && ids[0] == ids[1], "{ids:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["draft", "--har"])
        .arg(&files[0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `record.dir` in a config whose rules have no route yet records every
/// exchange (and says so), instead of silently nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_dir_with_no_route_yet_records_every_exchange() {
    let importer = taphook::demo::importer::ReferenceImporter::start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::hand_config(dir.path(), &importer.url(), "record:\n  dir: rec\n");
    let (proxy, admin) = (config.proxy, config.admin);
    let mut child = common::launch(dir.path(), admin, proxy, "info", &[])
        .await
        .unwrap();
    let r = common::client()
        .get(format!("http://{proxy}/_fixtures/empty?i=7"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let got = entries(&dir.path().join("rec"), 1).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got.len(), 1);
    assert!(got[0]["request"]["url"]
        .as_str()
        .unwrap()
        .ends_with("/_fixtures/empty?i=7"));
    let log = std::fs::read_to_string(dir.path().join("taphook.log")).unwrap();
    assert!(
        log.contains("no route could tap anything yet, so every exchange is recorded"),
        "{log}"
    );
}
