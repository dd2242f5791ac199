//! `record:`: the proxy's exchanges written to HAR files, secrets
//! redacted, that `taphook explain` reads back into the same events.

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
        let all: Vec<Value> = recordings(dir)
            .iter()
            .flat_map(|f| {
                let har: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap())
                    .expect("a recording is always a complete HAR");
                har["log"]["entries"].as_array().unwrap().clone()
            })
            .collect();
        if all.len() >= n || Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    assert!(create["url"]
        .as_str()
        .unwrap()
        .ends_with("/v1/embeds?access_token=REDACTED&page=1"));
    for name in ["x-api-key", "authorization", "x-tenant"] {
        assert_eq!(header(&create["headers"], name), Some("REDACTED"), "{name}");
    }
    let sent: Value = serde_json::from_str(create["postData"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(sent["template_key"], "contacts");
    assert_eq!(sent["embed_user_jwt"], "REDACTED");
    assert_eq!(sent["user"], json!({"password": "REDACTED", "name": "Ada"}));
    let answer: Value =
        serde_json::from_str(got[0]["response"]["content"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(answer["id"], id);
    assert_eq!(
        got[1]["request"]["postData"]["params"][0]["fileName"],
        "contacts.csv"
    );

    // The recording through the same rules gives the same two events.
    let file = recordings(&dir).pop().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["explain", "--json", "--har"])
        .arg(&file)
        .arg("--rules")
        .arg(stack.rules_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
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
