//! `taphook explain --har`: recorded traffic through the shipped rules,
//! exchange by exchange. The HAR in tests/data/har/oneschema-session.har
//! was recorded from the reference importer by tests/data/har/record.py;
//! the expected outputs sit beside it.

use std::process::{Command, Output};

use serde_json::Value;

fn taphook(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(args)
        .output()
        .unwrap()
}

fn explain(har: &str, extra: &[&str]) -> Output {
    let path = format!("tests/data/har/{har}");
    let mut args = vec!["explain", "--har", &path, "--rules", "rules"];
    args.extend_from_slice(extra);
    taphook(&args)
}

fn expected(name: &str) -> String {
    std::fs::read_to_string(format!("tests/data/har/{name}")).unwrap()
}

#[test]
fn a_recorded_session_shows_every_event_and_every_near_miss() {
    let out = explain("oneschema-session.har", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        expected("oneschema-session.explain.txt")
    );
}

#[test]
fn json_output_carries_events_webhooks_and_reasons() {
    let out = explain("oneschema-session.har", &["--json"]);
    assert!(out.status.success());
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports.len(), 12, "one report per HAR entry");
    let types: Vec<&str> = reports
        .iter()
        .flat_map(|r| r["events"].as_array().unwrap())
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "embed_initialized",
            "file_uploaded",
            "header_selected",
            "columns_mapped",
            "import_submitted",
            "import_submitted",
            "embed_closed",
            "headless_import_created",
            "import_completed"
        ]
    );
    // The refused header row: the route's status did not match.
    assert_eq!(reports[4]["status"], 422);
    assert_eq!(
        reports[4]["near_misses"][0],
        serde_json::json!({"route": "header-selected", "reason": "status 422 (the route takes 2xx)"})
    );
    // The session carried from the creation: template_key came with it.
    let mapped = &reports[3]["events"][0];
    assert_eq!(mapped["embed_id"], 53511);
    assert_eq!(mapped["webhooks"], serde_json::json!(["event_webhook"]));
    // The Dromo session never listed the webhook: assignment says why.
    let completed = &reports[11]["events"][0];
    assert_eq!(completed["webhooks"], serde_json::json!([]));
    assert_eq!(
        completed["skipped"][0][1],
        "skip: assignment is `session` and the session's webhook_keys do not hold this key"
    );
    // While the import ran, all three Dromo routes were near misses.
    let misses: Vec<&str> = reports[10]["near_misses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        misses,
        [
            "dromo-import-completed",
            "dromo-import-needs-review",
            "dromo-import-failed"
        ]
    );
    assert!(reports[10]["near_misses"][0]["reason"]
        .as_str()
        .unwrap()
        .starts_with(r#"`when` is false: {"==":[{"var":"response.body.status"},"SUCCESSFUL"]}"#));
}

#[test]
fn a_browser_export_is_read_as_it_is() {
    // A byte order mark, HTTP/2 pseudo-headers, fields of its own (`_initiator`),
    // a gzip response kept decoded and written in base64.
    let out = explain("browser-export.har", &["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let event = &reports[0]["events"][0];
    assert_eq!(event["event_type"], "embed_initialized");
    assert_eq!(event["embed_id"], 777);
    assert_eq!(reports[0]["path"], "/v1/embeds");
}

#[test]
fn a_malformed_har_names_the_entry_and_the_field() {
    for name in ["broken-no-method", "broken-base64"] {
        let out = explain(&format!("{name}.har"), &[]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(out.stdout.is_empty(), "{name}: nothing explained");
        assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            expected(&format!("{name}.err")),
            "{name}"
        );
    }
}

#[test]
fn not_a_har_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.har");
    std::fs::write(&path, r#"{"entries": []}"#).unwrap();
    let out = taphook(&[
        "explain",
        "--har",
        path.to_str().unwrap(),
        "--rules",
        "rules",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .ends_with("x.har: not a HAR: no top-level `log` object\n"));
}
