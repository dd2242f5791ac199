//! Every delivery format's exact body and headers, Dromo's matching, and
//! Standard Webhooks signatures checked by the official verifier.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const DROMO_EVENTS: &str =
    "[import_completed, headless_import_needs_review, headless_import_failed]";
const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_B: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";

fn hooks(entries: &[String]) -> Vec<(&'static str, String)> {
    vec![("hooks.yaml", format!("webhooks:\n{}", entries.join("")))]
}

/// Runs a Dromo headless import through the proxy and polls it `polls`
/// times; returns its id.
async fn headless_import(stack: &Stack, csv: &str, extra: Value, polls: usize) -> String {
    let mut body = json!({"schema_id": "schema-1", "original_filename": "contacts.csv",
        "user": {"id": "user-123", "name": "Caitlin Clark", "email": "cclark@uiowa.edu"}});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    let r = stack
        .client
        .post(stack.url("/api/v1/headless/imports/"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["status"], "AWAITING_UPLOAD");
    let id = created["id"].as_str().unwrap().to_string();
    let r = stack
        .client
        .put(stack.url(&format!("/api/v1/headless/imports/{id}/upload")))
        .body(csv.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..polls {
        let r = stack
            .client
            .get(stack.url(&format!("/api/v1/headless/imports/{id}/")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    id
}

const GOOD_CSV: &str = "name,email\nAda,ada@example.com\nEve,eve@example.com\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dromo_managed_webhooks_fire_once_per_transition() {
    let stack = Stack::with_rules(hooks(&[
        webhook(
            "dromo",
            "/hooks/dromo",
            &format!("    format: dromo\n    events: {DROMO_EVENTS}\n"),
        ),
        webhook(
            "basic",
            "/hooks/basic",
            "    format: dromo-basic\n    events: [import_completed]\n",
        ),
    ]))
    .await;
    // Polled 10 times: RUNNING, then SUCCESSFUL nine times.
    let id = headless_import(
        &stack,
        GOOD_CSV,
        json!({"import_identifier": "contacts-v2"}),
        10,
    )
    .await;
    let got = stack
        .receiver
        .wait_for("/hooks/dromo", 1, Duration::from_secs(10))
        .await;
    let basic = stack
        .receiver
        .wait_for("/hooks/basic", 1, Duration::from_secs(10))
        .await;
    // All ten polls processed (eight duplicates of the final status) ...
    assert_eq!(
        stack
            .wait_metric("taphook_events_duplicate_total", 8.0)
            .await,
        8.0
    );
    settle(Duration::from_millis(300)).await;
    // ... and still one delivery.
    assert_eq!(
        stack.receiver.received_on("/hooks/dromo").len(),
        1,
        "one event for ten polls of one status"
    );

    let r = &got[0];
    assert_eq!(r.header("content-type"), Some("application/json"));
    // As the catalog publishes it (issue 27).
    assert_in_catalog(&stack, "dromo", "import_completed", &r.json());
    let form: serde_json::Map<String, Value> = form_urlencoded::parse(&basic[0].body)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    assert_in_catalog(
        &stack,
        "dromo-basic",
        "import_completed",
        &Value::Object(form),
    );
    let mut body = r.json();
    let created = body["data"]["created_date"].take();
    let created = created.as_str().unwrap();
    assert!(humantime::parse_rfc3339(created).is_ok(), "{created}");
    assert_eq!(
        body,
        json!({"event": "import_completed", "data": {
            "id": id, "filename": "contacts.csv",
            "user": {"id": "user-123", "name": "Caitlin Clark", "email": "cclark@uiowa.edu", "company_id": null, "company_name": null},
            "created_date": null, "import_type": "HEADLESS", "status": "SUCCESSFUL", "num_data_rows": 2,
            "development_mode": false, "has_data": true,
            "headless": {"id": id, "status": "SUCCESSFUL", "schema_id": "schema-1", "original_filename": "contacts.csv",
                "import_identifier": "contacts-v2", "development_mode": false, "num_data_rows": 2, "has_data": true, "errors": []},
        }})
    );
    // Basic webhooks: a form with the upload id and nothing else.
    assert_eq!(
        basic[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        std::str::from_utf8(&basic[0].body).unwrap(),
        format!("uploadId={id}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dromo_needs_review_and_failed_imports() {
    let stack = Stack::with_rules(hooks(&[webhook(
        "dromo",
        "/hooks/dromo",
        &format!("    format: dromo\n    events: {DROMO_EVENTS}\n"),
    )]))
    .await;
    let review = headless_import(&stack, "name,email\nBob,bob-at-example\n", json!({}), 4).await;
    let failed = headless_import(&stack, "name,email\n", json!({}), 4).await;
    let got = stack
        .receiver
        .wait_for("/hooks/dromo", 2, Duration::from_secs(10))
        .await;
    settle(Duration::from_millis(300)).await;
    assert_eq!(stack.receiver.received_on("/hooks/dromo").len(), 2);
    let by_id = |id: &str| {
        got.iter()
            .map(|r| r.json())
            .find(|b| b["data"]["id"] == id)
            .unwrap()
    };
    let r = by_id(&review);
    assert_eq!(
        (r["event"].as_str(), r["data"]["status"].as_str()),
        (Some("headless_import_needs_review"), Some("NEEDS_REVIEW"))
    );
    let f = by_id(&failed);
    assert_eq!(
        (f["event"].as_str(), f["data"]["status"].as_str()),
        (Some("headless_import_failed"), Some("FAILED"))
    );
    assert_eq!(
        f["data"]["headless"]["errors"],
        json!(["the file has no data rows"])
    );
    for b in [&r, &f] {
        assert!(
            b["data"]["headless"].get("review_url").is_none()
                && b["data"]["headless"]
                    .get("original_file_download")
                    .is_none()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_and_import_identifiers_select_webhooks() {
    let stack = Stack::with_rules(hooks(&[
        webhook("dev", "/hooks/dev", "    format: dromo\n    events: [import_completed]\n    development_mode: true\n"),
        webhook("prod", "/hooks/prod", "    format: dromo\n    events: [import_completed]\n    development_mode: false\n"),
        webhook("both", "/hooks/both", "    format: dromo\n    events: [import_completed]\n"),
        webhook("contacts", "/hooks/contacts", "    format: dromo\n    events: [import_completed]\n    import_identifiers: [contacts-v2]\n"),
    ]))
    .await;
    let dev = headless_import(
        &stack,
        GOOD_CSV,
        json!({"development_mode": true, "import_identifier": "contacts-v2"}),
        2,
    )
    .await;
    let prod = headless_import(
        &stack,
        GOOD_CSV,
        json!({"development_mode": false, "import_identifier": "orders-v1"}),
        2,
    )
    .await;
    for (path, n) in [
        ("/hooks/both", 2),
        ("/hooks/dev", 1),
        ("/hooks/prod", 1),
        ("/hooks/contacts", 1),
    ] {
        stack
            .receiver
            .wait_for(path, n, Duration::from_secs(10))
            .await;
    }
    settle(Duration::from_millis(300)).await;
    let ids = |path: &str| -> BTreeSet<String> {
        stack
            .receiver
            .received_on(path)
            .iter()
            .map(|r| r.json()["data"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids("/hooks/dev"), BTreeSet::from([dev.clone()]));
    assert_eq!(ids("/hooks/prod"), BTreeSet::from([prod.clone()]));
    assert_eq!(ids("/hooks/both"), BTreeSet::from([dev.clone(), prod]));
    assert_eq!(ids("/hooks/contacts"), BTreeSet::from([dev]));
    let dev_event = &stack.receiver.received_on("/hooks/dev")[0].json();
    assert_eq!(dev_event["data"]["development_mode"], true);
}

fn rows(prefix: &str, n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"name": format!("{prefix}{i}"), "email": format!("{prefix}{i}@example.com")})).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flatfile_batches_of_1000_with_a_failed_part_retried_alone() {
    let extra = format!("    format: flatfile\n    events: [batch.update]\n    retry: {{ backoff: [50ms] }}\n    signing: {{ scheme: standard-webhooks, secrets: [{SECRET_A}] }}\n");
    let stack = Stack::with_rules(hooks(&[webhook("flatfile", "/hooks/flatfile", &extra)])).await;
    stack.receiver.script(
        "/hooks/flatfile",
        &[
            Reply::Status(200),
            Reply::Status(429),
            Reply::Status(200),
            Reply::Status(200),
        ],
    );
    let (valid, invalid) = (rows("v", 2_000), rows("i", 500));
    let body = json!({"schema_id": 42, "valid_rows": valid, "invalid_rows": invalid});
    stack.post_json("/v1/batches/b-77/submit", body).await;
    let got = stack
        .receiver
        .wait_for("/hooks/flatfile", 4, Duration::from_secs(15))
        .await;
    settle(Duration::from_millis(300)).await;
    assert_eq!(
        stack.receiver.received_on("/hooks/flatfile").len(),
        4,
        "{}",
        stack.log()
    );

    let bodies: Vec<Value> = got.iter().map(|r| r.json()).collect();
    for (r, body) in got.iter().zip(&bodies) {
        assert_in_catalog(&stack, "flatfile", "batch.update", body);
        assert_in_catalog(
            &stack,
            "standard-webhooks",
            "batch.update",
            &signature_headers(r),
        );
    }
    let indexes: Vec<u64> = bodies
        .iter()
        .map(|b| b["event"]["sequence"]["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        indexes,
        [1, 2, 2, 3],
        "the failed middle part, and only it, is sent again"
    );
    assert_eq!(bodies[1], bodies[2]);
    let event_id = bodies[0]["event"]["id"].clone();
    assert!(event_id.as_str().unwrap().starts_with("event-"));
    let mut rebuilt_valid = Vec::new();
    let mut rebuilt_invalid = Vec::new();
    for (b, expected_count) in [(&bodies[0], 1000), (&bodies[2], 1000), (&bodies[3], 500)] {
        assert_eq!(b["event"]["id"], event_id);
        assert_eq!(b["event"]["type"], "batch.update");
        assert_eq!(b["event"]["sequence"]["count"], 3);
        assert_eq!(b["data"]["meta"]["batch"], json!({"id": "b-77"}));
        assert_eq!(b["data"]["meta"]["schema"], json!({"id": 42}));
        assert_eq!(b["data"]["meta"]["count"], expected_count);
        let (v, i) = (
            b["data"]["validRows"].as_array().unwrap(),
            b["data"]["invalidRows"].as_array().unwrap(),
        );
        assert_eq!(v.len() + i.len(), expected_count);
        rebuilt_valid.extend(v.iter().cloned());
        rebuilt_invalid.extend(i.iter().cloned());
    }
    assert_eq!(rebuilt_valid, valid);
    assert_eq!(rebuilt_invalid, invalid);
    // Each part is its own signed message.
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    let uuid = event_id.as_str().unwrap();
    assert_eq!(
        ids,
        [
            format!("{uuid}-1"),
            format!("{uuid}-2"),
            format!("{uuid}-2"),
            format!("{uuid}-3")
        ]
    );
    let verifier = standardwebhooks::Webhook::new(SECRET_A).unwrap();
    for r in &got {
        verifier
            .verify(&r.body, &r.headers)
            .expect("signature verifies");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_signatures_verify_with_both_secrets_while_rotating() {
    let extra = format!("    events: [embed_initialized]\n    signing: {{ scheme: standard-webhooks, secrets: [{SECRET_A}, {SECRET_B}] }}\n");
    let stack = Stack::with_rules(hooks(&[webhook("signed", "/hooks/signed", &extra)])).await;
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let got = stack
        .receiver
        .wait_for("/hooks/signed", 1, Duration::from_secs(10))
        .await;
    let r = &got[0];
    assert_eq!(r.header("webhook-id"), r.json()["uuid"].as_str());
    assert_in_catalog(&stack, "oneschema", "embed_initialized", &r.json());
    assert_in_catalog(
        &stack,
        "standard-webhooks",
        "embed_initialized",
        &signature_headers(r),
    );
    let signature = r.header("webhook-signature").unwrap();
    assert_eq!(
        signature
            .split(' ')
            .filter(|s| s.starts_with("v1,"))
            .count(),
        2,
        "{signature}"
    );
    for secret in [SECRET_A, SECRET_B] {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&r.body, &r.headers)
            .expect("verifies");
    }
    let other =
        standardwebhooks::Webhook::new("whsec_b3RoZXItc2VjcmV0LW5vdC1jb25maWd1cmVk").unwrap();
    assert!(other.verify(&r.body, &r.headers).is_err());
    let mut tampered = r.body.to_vec();
    tampered[10] ^= 1;
    assert!(standardwebhooks::Webhook::new(SECRET_A)
        .unwrap()
        .verify(&tampered, &r.headers)
        .is_err());
}

#[test]
fn a_malformed_signing_secret_is_a_load_error() {
    let (code, text) = check_rules(&[(
        "hooks.yaml",
        "webhooks:\n  - key: s\n    url: http://127.0.0.1:1/\n    events: [\"*\"]\n    signing:\n      scheme: standard-webhooks\n      secrets:\n        - not-whsec\n",
    )]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("hooks.yaml:8: a signing secret starts with `whsec_`"),
        "{text}"
    );
}
