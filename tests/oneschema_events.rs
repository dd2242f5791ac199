//! The OneSchema contract end to end: reference importer → taphook →
//! recording receiver, over real loopback sockets.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use taphook::demo::{demo_jwt, EVENT_TYPES};

fn hooks(entries: &[String]) -> Vec<(&'static str, String)> {
    vec![("hooks.yaml", format!("webhooks:\n{}", entries.join("")))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_eight_event_types_arrive_with_the_exact_envelope() {
    let rules = hooks(&[webhook(
        "event_webhook",
        "/hooks/main",
        "    events: [\"*\"]\n    assignment: session\n    secret: s3cret\n",
    )]);
    let stack = Stack::with_rules(rules).await;
    let jwt = demo_jwt();
    let id = stack
        .create_embed(json!({"template_key": "contacts", "embed_user_jwt": jwt, "event_webhook_keys": ["event_webhook"], "dev_mode": false}), true)
        .await;
    stack.finish_session(id).await;
    let got = stack
        .receiver
        .wait_for("/hooks/main", 8, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 8, "{}", stack.log());
    // Every body as the catalog publishes it (issue 27).
    for r in &got {
        let body = r.json();
        let event_type = body["event_type"].as_str().unwrap().to_string();
        assert_in_catalog(&stack, "oneschema", &event_type, &body);
    }

    let expected_data = [
        ("embed_initialized", "api", json!({})),
        (
            "file_uploaded",
            "user",
            json!({"filename": "contacts.csv", "content_type": "text/csv", "num_rows": 3}),
        ),
        ("header_selected", "user", json!({"header_row_index": 0})),
        (
            "columns_mapped",
            "user",
            json!({"validation_error_counts": {"total": 1, "by_column": {"email": {"invalid_email": 1}}}}),
        ),
        (
            "sheet_operation_performed",
            "user",
            json!({"operation": "delete_rows"}),
        ),
        (
            "import_submitted",
            "user",
            json!({"import_type": "importer"}),
        ),
        ("embed_closed", "user", json!({})),
        ("embed_resumed", "user", json!({})),
    ];
    let mut uuids = BTreeSet::new();
    for (event_type, trigger, data) in expected_data {
        let r = got
            .iter()
            .find(|r| r.json()["event_type"] == event_type)
            .unwrap_or_else(|| panic!("no {event_type}"));
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/json"));
        // Basic auth: the secret is the password, with no username (":s3cret").
        assert_eq!(r.header("authorization"), Some("Basic OnMzY3JldA=="));
        let mut body = r.json();
        let obj = body.as_object_mut().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "uuid",
                "embed_id",
                "embed_jwt",
                "environment_name",
                "template_key",
                "event_type",
                "trigger_type",
                "data",
                "created_at"
            ]
        );
        let uuid = obj.remove("uuid").unwrap();
        let uuid = uuid.as_str().unwrap();
        assert!(
            uuid.starts_with("event-") && uuid::Uuid::parse_str(&uuid[6..]).is_ok(),
            "{uuid}"
        );
        uuids.insert(uuid.to_string());
        let created_at = obj.remove("created_at").unwrap().as_f64().unwrap();
        assert!(created_at > 1.7e9, "{created_at}");
        assert_eq!(
            body,
            json!({
                "embed_id": id, "embed_jwt": jwt, "environment_name": "Production", "template_key": "contacts",
                "event_type": event_type, "trigger_type": trigger, "data": data
            }),
            "{event_type}"
        );
    }
    assert_eq!(uuids.len(), 8);
    // Deliveries run concurrently, so arrival order is not promised;
    // `created_at` orders the events as the session's steps happened.
    let mut by_time: Vec<(f64, String)> = got
        .iter()
        .map(|r| {
            (
                r.json()["created_at"].as_f64().unwrap(),
                r.json()["event_type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    by_time.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(
        by_time.into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
        EVENT_TYPES
    );
    assert_eq!(
        stack
            .wait_metric(
                "taphook_deliveries_total{outcome=\"delivered\",webhook=\"event_webhook\"}",
                8.0
            )
            .await,
        8.0
    );
    assert_eq!(
        stack
            .wait_metric(
                "taphook_events_derived_total{event_type=\"file_uploaded\"}",
                1.0
            )
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_keys_assign_sessions_like_event_webhook_keys() {
    let rules = hooks(&[
        webhook(
            "assigned",
            "/hooks/assigned",
            "    events: [embed_initialized, import_submitted]\n    assignment: session\n",
        ),
        webhook(
            "unassigned",
            "/hooks/unassigned",
            "    events: [\"*\"]\n    assignment: session\n",
        ),
        webhook(
            "everyone",
            "/hooks/everyone",
            "    events: [embed_initialized]\n",
        ),
    ]);
    let stack = Stack::with_rules(rules).await;
    let a = stack
        .create_embed(
            json!({"template_key": "contacts", "event_webhook_keys": ["assigned"]}),
            false,
        )
        .await;
    stack
        .post_json(&format!("/v1/embeds/{a}/import"), json!({}))
        .await;
    let empty = stack
        .create_embed(
            json!({"template_key": "contacts", "event_webhook_keys": []}),
            false,
        )
        .await;
    let missing = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;

    let everyone = stack
        .receiver
        .wait_for("/hooks/everyone", 3, Duration::from_secs(10))
        .await;
    let ids: BTreeSet<u64> = everyone
        .iter()
        .map(|r| r.json()["embed_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from([a, empty, missing]));
    let assigned = stack
        .receiver
        .wait_for("/hooks/assigned", 2, Duration::from_secs(10))
        .await;
    let seen: BTreeSet<(u64, String)> = assigned
        .iter()
        .map(|r| {
            (
                r.json()["embed_id"].as_u64().unwrap(),
                r.json()["event_type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        BTreeSet::from([
            (a, "embed_initialized".to_string()),
            (a, "import_submitted".to_string()),
        ])
    );
    settle(Duration::from_millis(300)).await;
    assert!(stack.receiver.received_on("/hooks/unassigned").is_empty());
    assert_eq!(
        stack.receiver.received_on("/hooks/assigned").len(),
        2,
        "empty or missing webhook_keys reach no one"
    );
    // No secret configured: no Authorization header.
    assert_eq!(assigned[0].header("authorization"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_type_follows_the_api_key_header() {
    let rules = hooks(&[webhook(
        "all",
        "/hooks/all",
        "    events: [embed_initialized]\n",
    )]);
    let stack = Stack::with_rules(rules).await;
    let api = stack
        .create_embed(json!({"template_key": "contacts"}), true)
        .await;
    let user = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let got = stack
        .receiver
        .wait_for("/hooks/all", 2, Duration::from_secs(10))
        .await;
    let trigger = |id: u64| {
        got.iter()
            .find(|r| r.json()["embed_id"] == id)
            .unwrap()
            .json()["trigger_type"]
            .clone()
    };
    assert_eq!(trigger(api), "api");
    assert_eq!(trigger(user), "user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_yields_one_event() {
    let rules = hooks(&[webhook(
        "ops",
        "/hooks/ops",
        "    events: [sheet_operation_performed]\n",
    )]);
    let stack = Stack::with_rules(rules).await;
    let id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    for _ in 0..3 {
        let r = stack
            .client
            .post(stack.url(&format!("/v1/embeds/{id}/sheet-operations")))
            .header("idempotency-key", "op-7f3a")
            .json(&json!({"operation": "delete_rows"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // A different key is a different step.
    stack
        .client
        .post(stack.url(&format!("/v1/embeds/{id}/sheet-operations")))
        .header("idempotency-key", "op-other")
        .json(&json!({"operation": "delete_rows"}))
        .send()
        .await
        .unwrap();
    let got = stack
        .receiver
        .wait_for("/hooks/ops", 2, Duration::from_secs(10))
        .await;
    settle(Duration::from_millis(300)).await;
    assert_eq!(stack.receiver.received_on("/hooks/ops").len(), 2, "{got:?}");
    assert_eq!(
        stack
            .wait_metric("taphook_events_duplicate_total", 2.0)
            .await,
        2.0
    );
    assert_eq!(
        stack
            .wait_metric(
                "taphook_events_derived_total{event_type=\"sheet_operation_performed\"}",
                4.0
            )
            .await,
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_key_drops_the_same_step_seen_twice() {
    // Two routes on one creation: the profile's (dedup_key on the id) and
    // a second file's that derives the same step again with the same key.
    let mut rules = hooks(&[webhook(
        "init",
        "/hooks/init",
        "    events: [embed_initialized]\n",
    )]);
    rules.push((
        "again.yaml",
        "routes:\n  - name: init-again\n    event: embed_initialized\n    method: POST\n    path: /v1/embeds\n    session: $response.body.id\n    dedup_key: [\"create\", \"$response.body.id\"]\n".to_string(),
    ));
    let stack = Stack::with_rules(rules).await;
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack
        .receiver
        .wait_for("/hooks/init", 1, Duration::from_secs(10))
        .await;
    settle(Duration::from_millis(300)).await;
    assert_eq!(stack.receiver.received_on("/hooks/init").len(), 1);
    assert_eq!(
        stack
            .wait_metric("taphook_events_duplicate_total", 1.0)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_excludes_events() {
    let rules = hooks(&[
        webhook("orders", "/hooks/orders", "    events: [\"*\"]\n    filter: {\"==\": [\"$template_key\", \"orders\"]}\n"),
        webhook("errors", "/hooks/errors", "    events: [columns_mapped]\n    filter: {\">\": [\"$data.validation_error_counts.total\", 0]}\n"),
    ]);
    let stack = Stack::with_rules(rules).await;
    let contacts = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack.finish_session(contacts).await;
    let orders = stack
        .create_embed(json!({"template_key": "orders"}), false)
        .await;
    let got = stack
        .receiver
        .wait_for("/hooks/orders", 1, Duration::from_secs(10))
        .await;
    let errors = stack
        .receiver
        .wait_for("/hooks/errors", 1, Duration::from_secs(10))
        .await;
    settle(Duration::from_millis(300)).await;
    let got_ids: Vec<Value> = stack
        .receiver
        .received_on("/hooks/orders")
        .iter()
        .map(|r| r.json()["embed_id"].clone())
        .collect();
    assert_eq!(got_ids, vec![json!(orders)], "{got:?}");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].json()["data"]["validation_error_counts"]["total"],
        1
    );
    assert_eq!(
        stack
            .wait_metric("taphook_filter_rejected_total{webhook=\"orders\"}", 8.0)
            .await,
        8.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedup_key_with_a_missing_part_does_not_merge_steps() {
    let mut rules = hooks(&[webhook(
        "partial",
        "/hooks/partial",
        "    events: [partial_init]\n",
    )]);
    rules.push((
        "partial.yaml",
        "routes:\n  - name: partial\n    event: partial_init\n    method: POST\n    path: /v1/embeds\n    dedup_key: [\"x\", \"$response.body.no_such_field\"]\n".to_string(),
    ));
    let stack = Stack::with_rules(rules).await;
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let got = stack
        .receiver
        .wait_for("/hooks/partial", 2, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 2);
    assert_ne!(got[0].json()["uuid"], got[1].json()["uuid"]);
}

/// File names as a browser sends them (RFC 7578, RFC 6266): a quoted `;`
/// is part of the name (it was cut at it), an escaped quote is a quote,
/// and `filename*` (RFC 5987) wins over `filename`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_names_with_semicolons_quotes_and_utf8_arrive_whole() {
    let rules = hooks(&[webhook(
        "uploads",
        "/hooks/uploads",
        "    events: [file_uploaded]\n",
    )]);
    let stack = Stack::with_rules(rules).await;
    let cases = [
        (r#"filename="Q1 report; final.csv""#, "Q1 report; final.csv"),
        (
            r#"filename="a \"quoted\" name.csv""#,
            "a \"quoted\" name.csv",
        ),
        (
            r#"filename="rates.csv"; filename*=UTF-8''%E2%82%AC%20rates.csv"#,
            "\u{20ac} rates.csv",
        ),
    ];
    let mut ids = Vec::new();
    for (param, _) in &cases {
        let id = stack
            .create_embed(json!({"template_key": "contacts"}), true)
            .await;
        let body = format!(
            "--b0undary\r\nContent-Disposition: form-data; name=\"file\"; {param}\r\nContent-Type: text/csv\r\n\r\nname\r\nAda\r\n--b0undary--\r\n"
        );
        let r = stack
            .post(
                &format!("/v1/embeds/{id}/upload"),
                "multipart/form-data; boundary=b0undary",
                body.into_bytes(),
            )
            .await;
        assert!(r.status().is_success());
        ids.push(id);
    }
    let got = stack
        .receiver
        .wait_for("/hooks/uploads", cases.len(), Duration::from_secs(10))
        .await;
    for (id, (_, filename)) in ids.iter().zip(&cases) {
        let event = got
            .iter()
            .map(|r| r.json())
            .find(|e| e["embed_id"] == *id)
            .unwrap_or_else(|| panic!("no upload event for {id}: {}", stack.log()));
        assert_eq!(event["data"]["filename"], *filename, "{event}");
    }
}
