//! `taphook explain --har`: recorded traffic through the shipped rules,
//! exchange by exchange. rules/tests/reference-importer.har was recorded
//! from the reference importer by tests/data/har/record.py; the expected
//! outputs and the broken HARs are in tests/data/har/.

use std::process::{Command, Output};

use serde_json::Value;

fn taphook(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(args)
        .output()
        .unwrap()
}

fn explain(har: &str, extra: &[&str]) -> Output {
    let path = if har == "reference-importer.har" {
        format!("rules/tests/{har}")
    } else {
        format!("tests/data/har/{har}")
    };
    let mut args = vec!["explain", "--har", &path, "--rules", "rules"];
    args.extend_from_slice(extra);
    taphook(&args)
}

fn expected(name: &str) -> String {
    std::fs::read_to_string(format!("tests/data/har/{name}")).unwrap()
}

#[test]
fn a_recorded_session_shows_every_event_and_every_near_miss() {
    let out = explain("reference-importer.har", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        expected("reference-importer.explain.txt")
    );
}

#[test]
fn json_output_carries_events_webhooks_and_reasons() {
    let out = explain("reference-importer.har", &["--json"]);
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
        serde_json::json!({"route": "header-selected", "event": "header_selected", "reason": "status 422 (the route takes 2xx)"})
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
        .starts_with(r#"`when` is false: {"==":["$response.body.status","SUCCESSFUL"]}"#));
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

/// `taphook test`: the shipped rules pass their own tests; a failing test
/// prints expected against derived and, for an event that did not come, the
/// routes that nearly fired; a malformed test file names its line.
#[test]
fn route_tests_pass_fail_and_explain() {
    let out = taphook(&["test", "--rules", "rules", "rules/tests/"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.ends_with(" passed, 0 failed\n"), "{text}");

    // Inline exchanges: no `response` is a 200; a file names its field.
    let out = taphook(&[
        "test",
        "--rules",
        "tests/data/route-tests/rules",
        "tests/data/route-tests/inline.yaml",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.ends_with("2 passed, 0 failed\n"), "{text}");

    let out = taphook(&["test", "tests/data/route-tests/failing.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string("tests/data/route-tests/failing.out").unwrap()
    );

    let out = taphook(&["test", "tests/data/route-tests/malformed.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        std::fs::read_to_string("tests/data/route-tests/malformed.err").unwrap()
    );
}

/// `taphook draft`: lifecycle routes by evidence (the creation whose id
/// threads the session, the upload, the steps after it, the submit, the
/// close, a headless import's poll reaching its end), ids turned into
/// params, the session key found; `taphook check` accepts it as it is and
/// every route fires on the traffic it came from.
#[test]
fn a_draft_from_a_har_is_valid_and_fires_on_its_traffic() {
    let out = taphook(&["draft", "--har", "rules/tests/reference-importer.har"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let draft = String::from_utf8(out.stdout).unwrap();
    assert_eq!(draft, expected("reference-importer.draft.yaml"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("draft.yaml"), &draft).unwrap();
    let rules = dir.path().to_str().unwrap();
    let out = taphook(&["check", "--rules", rules]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = taphook(&[
        "explain",
        "--har",
        "rules/tests/reference-importer.har",
        "--rules",
        rules,
        "--json",
    ]);
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let fired: Vec<(&str, &Value)> = reports
        .iter()
        .flat_map(|r| r["events"].as_array().unwrap())
        .map(|e| (e["event_type"].as_str().unwrap(), &e["embed_id"]))
        .collect();
    let types: Vec<&str> = fired.iter().map(|(t, _)| *t).collect();
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
            "embed_initialized",
            "file_uploaded",
            "import_succeeded"
        ]
    );
    // The steps are in the session the creation handed out.
    let embed = serde_json::json!(53511);
    assert!(fired[..7].iter().all(|(_, id)| **id == embed), "{fired:?}");
    let headless = serde_json::json!("bee30e8e-3ba1-4816-888c-184fe79123aa");
    assert!(
        fired[7..].iter().all(|(_, id)| **id == headless),
        "{fired:?}"
    );
    // Every route the draft wrote fired.
    let routes: std::collections::BTreeSet<&str> = reports
        .iter()
        .flat_map(|r| r["events"].as_array().unwrap())
        .map(|e| e["route"].as_str().unwrap())
        .collect();
    let written = draft.matches("\n  - name: ").count();
    assert_eq!(routes.len(), written, "{draft}");
}

/// `taphook draft --why`: each route says which exchanges and which
/// evidence led to it, as comments the rules file keeps.
#[test]
fn a_draft_says_why() {
    let out = taphook(&[
        "draft",
        "--har",
        "rules/tests/reference-importer.har",
        "--why",
    ]);
    assert!(out.status.success());
    let draft = String::from_utf8(out.stdout).unwrap();
    assert!(
        draft.contains(
            "  #   #1 POST /v1/embeds/53511/upload -> 200: a file part `file` (contacts.csv)\n"
        ),
        "{draft}"
    );
    assert!(
        draft.contains("  #   #0 POST /v1/embeds -> 200: its answer hands out `53511` (answer field `id`), which #1 POST /v1/embeds/53511/upload carries\n"),
        "{draft}"
    );
    assert!(
        draft.contains(
            "this answer is a success: {\"in\":[\"$response.body.status\",[\"SUCCESSFUL\"]]}"
        ),
        "{draft}"
    );
}
