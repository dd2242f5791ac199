//! The admin API: bearer auth, OneSchema's events API, and webhook
//! management written back into the rules directory.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "admin-t0ken";

fn config(extra: &str) -> String {
    format!("admin_token: {TOKEN}\n{extra}")
}

async fn api(stack: &Stack, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    stack.api(TOKEN, method, path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_the_token() {
    let stack = Stack::start(Setup {
        config: &config(""),
        ..Default::default()
    })
    .await;
    let url = format!("http://{}/v1/event-webhooks", stack.admin);
    for auth in [None, Some("Bearer wrong"), Some("Basic YWRtaW4tdDBrZW4=")] {
        let mut req = stack.client.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    assert_eq!(api(&stack, "GET", "/v1/event-webhooks", None).await.0, 200);
    // Health and metrics stay open.
    assert_eq!(stack.admin_status("/healthz").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_the_api_is_closed() {
    let stack = Stack::start(Setup::default()).await;
    let (status, body) = api(&stack, "GET", "/v1/event-webhooks", None).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("admin_token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_api_lists_a_sessions_events_oldest_first_in_pages() {
    let stack = Stack::start(Setup {
        config: &config(""),
        ..Default::default()
    })
    .await;
    let id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack.finish_session(id).await;
    let other = stack
        .create_embed(json!({"template_key": "orders"}), false)
        .await;
    // Events are logged as the pipeline accepts them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut all = Vec::new();
    while std::time::Instant::now() < deadline {
        let (status, body) = api(
            &stack,
            "GET",
            &format!("/v1/embeds/{id}/events?limit=1000"),
            None,
        )
        .await;
        if status == 200 && body["events"].as_array().unwrap().len() == 8 {
            all = body["events"].as_array().unwrap().clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let types: Vec<&str> = all
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, taphook::demo::EVENT_TYPES);
    assert!(all
        .iter()
        .all(|e| e["embed_id"] == id && e["template_key"] == "contacts"));

    // Pages of 3: 3 + 3 + 2, following the cursor, same order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut sizes = Vec::new();
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/embeds/{id}/events?limit=3&cursor={c}"),
            None => format!("/v1/embeds/{id}/events?limit=3"),
        };
        let (status, body) = api(&stack, "GET", &path, None).await;
        assert_eq!(status, 200);
        let page = body["events"].as_array().unwrap();
        sizes.push(page.len());
        paged.extend(page.iter().cloned());
        assert_eq!(body["has_next_page"], body["next_cursor"].is_string());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(sizes, [3, 3, 2]);
    assert_eq!(paged, all);

    let (status, body) = api(&stack, "GET", &format!("/v1/embeds/{other}/events"), None).await;
    assert_eq!(
        (status, body["events"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    assert_eq!(
        api(&stack, "GET", "/v1/embeds/999999/events", None).await.0,
        404
    );
    assert_eq!(
        api(
            &stack,
            "GET",
            &format!("/v1/embeds/{id}/events?cursor=bogus"),
            None
        )
        .await
        .0,
        400
    );
    assert_eq!(
        api(
            &stack,
            "GET",
            &format!("/v1/embeds/{id}/events?limit=0"),
            None
        )
        .await
        .0,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_deleted_after_the_retention() {
    let stack = Stack::start(Setup {
        config: &config("events_retention: 1s\n"),
        ..Default::default()
    })
    .await;
    let id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let path = format!("/v1/embeds/{id}/events");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while api(&stack, "GET", &path, None).await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the event was never listed"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(api(&stack, "GET", &path, None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_management_round_trips_and_survives_a_restart() {
    let hand = format!(
        "webhooks:\n{}",
        webhook("by_hand", "/hooks/hand", "    events: [\"*\"]\n")
    );
    let mut stack = Stack::start(Setup {
        config: &config(""),
        rules: vec![("hand.yaml", hand)],
        ..Default::default()
    })
    .await;
    let url = stack.receiver.url("/hooks/api");

    let (status, created) = api(
        &stack,
        "POST",
        "/v1/event-webhooks",
        Some(json!({
            "webhook_key": "from_api", "url": url, "events": ["embed_initialized"],
            "secret_key": "s3cret", "description": "made through the API"
        })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["secret_key"], "********", "secrets are masked");
    assert_eq!(created["managed_by_api"], true);
    let file = stack.rules_dir().join("event-webhooks/from_api.json");
    assert!(file.exists());
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("\"secret\": \"s3cret\""));

    // Applied without a restart.
    stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let got = stack
        .receiver
        .wait_for("/hooks/api", 1, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("authorization"), Some("Basic OnMzY3JldA=="));

    let (status, _) = api(
        &stack,
        "POST",
        "/v1/event-webhooks",
        Some(json!({"webhook_key": "from_api", "url": url, "events": ["*"]})),
    )
    .await;
    assert_eq!(status, 409);
    let (status, body) = api(
        &stack,
        "POST",
        "/v1/event-webhooks",
        Some(json!({"webhook_key": "bad", "url": url, "events": ["no_such_event"]})),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown event type `no_such_event`"),
        "{body}"
    );
    assert!(
        !stack.rules_dir().join("event-webhooks/bad.json").exists(),
        "an invalid change writes nothing"
    );
    assert_eq!(
        api(
            &stack,
            "POST",
            "/v1/event-webhooks",
            Some(json!({"webhook_key": "../x", "url": url, "events": ["*"]}))
        )
        .await
        .0,
        400
    );

    // Update and rename.
    let (status, updated) = api(&stack, "PUT", "/v1/event-webhooks/from_api", Some(json!({
        "new_webhook_key": "renamed", "events": ["embed_initialized", "import_submitted"], "description": null
    })))
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["webhook_key"], "renamed");
    assert_eq!(
        updated["events"],
        json!(["embed_initialized", "import_submitted"])
    );
    assert_eq!(updated["description"], Value::Null);
    assert!(!file.exists());
    assert!(stack
        .rules_dir()
        .join("event-webhooks/renamed.json")
        .exists());
    assert_eq!(
        api(&stack, "GET", "/v1/event-webhooks/from_api", None)
            .await
            .0,
        404
    );

    // Hand-written webhooks are read-only here.
    let (status, body) = api(
        &stack,
        "PUT",
        "/v1/event-webhooks/by_hand",
        Some(json!({"events": ["*"]})),
    )
    .await;
    assert_eq!(status, 409);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("hand.yaml"));

    // A restart reads the rules directory: the change is still there.
    stack.restart().await;
    let (status, list) = api(&stack, "GET", "/v1/event-webhooks", None).await;
    assert_eq!(status, 200);
    let keys: Vec<&str> = list["event_webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["webhook_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["renamed", "by_hand"]);
    let (_, renamed) = api(&stack, "GET", "/v1/event-webhooks/renamed", None).await;
    assert_eq!(
        renamed["events"],
        json!(["embed_initialized", "import_submitted"])
    );
    assert_eq!(renamed["secret_key"], "********");

    assert_eq!(
        api(&stack, "DELETE", "/v1/event-webhooks/renamed", None)
            .await
            .0,
        204
    );
    assert_eq!(
        api(&stack, "GET", "/v1/event-webhooks/renamed", None)
            .await
            .0,
        404
    );
    assert!(!stack
        .rules_dir()
        .join("event-webhooks/renamed.json")
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_webhooks_own_file_is_managed_by_the_api() {
    // A file placed by hand in event-webhooks/ holding two webhooks, with a
    // secret taken from the environment: the API must not touch it.
    let by_hand = r#"{"webhooks": [{"key": "a", "url": "{receiver}/a?token=${HOME}", "events": ["*"]}, {"key": "b", "url": "{receiver}/b", "events": ["*"]}]}"#.to_string();
    let mut stack = Stack::start(Setup {
        config: &config(""),
        rules: vec![("event-webhooks.json", by_hand)],
        ..Default::default()
    })
    .await;
    // (written beside, then moved into the directory the API uses)
    let dir = stack.rules_dir().join("event-webhooks");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::rename(
        stack.rules_dir().join("event-webhooks.json"),
        dir.join("pair.json"),
    )
    .unwrap();
    let before = std::fs::read_to_string(dir.join("pair.json")).unwrap();
    stack.restart().await;
    for (method, body) in [
        ("DELETE", None),
        ("PUT", Some(json!({"events": ["embed_initialized"]}))),
    ] {
        let (status, resp) = api(&stack, method, "/v1/event-webhooks/b", body).await;
        assert_eq!(status, 409, "{resp}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("pair.json")).unwrap(),
        before
    );
    let (_, a) = api(&stack, "GET", "/v1/event-webhooks/a", None).await;
    assert_eq!(
        a["url"],
        stack.receiver.url("/a?…"),
        "query strings are not shown"
    );
    assert_eq!(a["managed_by_api"], false);
}

/// `POST /v1/events`: a pushed event goes the way of derived ones (session
/// fields, assignment, filters, event log, delivery) and is idempotent by
/// its UUID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_events_are_delivered_once_per_uuid() {
    let hooks = [
        webhook(
            "assigned",
            "/assigned",
            "    events: [import_submitted]\n    assignment: session\n",
        ),
        webhook(
            "filtered",
            "/filtered",
            "    events: [\"*\"]\n    filter: {\">\": [\"$data.rows\", 10]}\n",
        ),
    ];
    let stack = Stack::start(Setup {
        rules: vec![("hooks.yaml", format!("webhooks:\n{}", hooks.join("")))],
        config: &config(""),
        ..Default::default()
    })
    .await;
    let id = stack
        .create_embed(
            json!({"template_key": "contacts", "embed_user_jwt": "a.b.c", "event_webhook_keys": ["assigned"]}),
            false,
        )
        .await;
    // The session is known once its first event is derived.
    stack
        .wait_metric(
            "taphook_events_derived_total{event_type=\"embed_initialized\"}",
            1.0,
        )
        .await;
    let created_at = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()) as f64
        + 0.5;
    let pushed = json!({
        "uuid": "event-0e7b6a44-7d5c-4f0e-9a57-5b1b7c1f0a01",
        "embed_id": id.to_string(),
        "event_type": "import_submitted",
        "data": {"rows": 42},
        "created_at": created_at,
    });
    let (status, body) = api(&stack, "POST", "/v1/events", Some(pushed.clone())).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({"data": {"uuid": "event-0e7b6a44-7d5c-4f0e-9a57-5b1b7c1f0a01", "duplicate": false}})
    );
    let (status, body) = api(&stack, "POST", "/v1/events", Some(pushed)).await;
    assert_eq!(
        (status, &body["data"]["duplicate"]),
        (200, &json!(true)),
        "{body}"
    );

    let got = stack
        .receiver
        .wait_for("/assigned", 1, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 1, "{}", stack.log());
    assert_eq!(
        got[0].json(),
        json!({
            "uuid": "event-0e7b6a44-7d5c-4f0e-9a57-5b1b7c1f0a01",
            "embed_id": id,
            "embed_jwt": "a.b.c",
            "environment_name": "Production",
            "template_key": "contacts",
            "event_type": "import_submitted",
            "trigger_type": "api",
            "data": {"rows": 42},
            "created_at": created_at,
        })
    );
    // The filter saw it too; the derived embed_initialized (no rows) not.
    let filtered = stack
        .receiver
        .wait_for("/filtered", 1, Duration::from_secs(10))
        .await;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].json()["event_type"], "import_submitted");
    // In the session's event log, after the derived one.
    let (status, page) = api(&stack, "GET", &format!("/v1/embeds/{id}/events"), None).await;
    assert_eq!(status, 200);
    let types: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["embed_initialized", "import_submitted"]);
    settle(Duration::from_millis(300)).await;
    assert_eq!(stack.receiver.received_on("/assigned").len(), 1);
    assert_eq!(stack.metric("taphook_events_duplicate_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_events_are_checked() {
    let stack = Stack::start(Setup {
        config: &config(""),
        ..Default::default()
    })
    .await;
    let cases = [
        (json!([1]), "the body must be a JSON object (an event envelope)"),
        (json!({"embed_id": 1}), "`event_type` is required"),
        (
            json!({"event_type": "x"}),
            "`embed_id` is required (a string or a number)",
        ),
        (
            json!({"event_type": "x", "embed_id": 1, "trigger_type": "cron"}),
            "`trigger_type` must be `user`, `api` or `automation`",
        ),
        (
            json!({"event_type": "x", "embed_id": 1, "created_at": "yesterday"}),
            "`created_at` must be seconds since the epoch",
        ),
        (
            json!({"event_type": "x", "embed_id": 1, "eventtype": "x"}),
            "unknown field `eventtype` (fields: uuid, embed_id, embed_jwt, environment_name, template_key, event_type, trigger_type, data, created_at)",
        ),
    ];
    for (body, message) in cases {
        let (status, answer) = api(&stack, "POST", "/v1/events", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["error"]["code"], "invalid_event", "{body}");
        assert_eq!(answer["error"]["message"], message, "{body}");
    }
    // Without a UUID, each push is a new event.
    let body = json!({"event_type": "x", "embed_id": "s-1"});
    let (s1, a) = api(&stack, "POST", "/v1/events", Some(body.clone())).await;
    let (s2, b) = api(&stack, "POST", "/v1/events", Some(body)).await;
    assert_eq!((s1, s2), (202, 202));
    assert_ne!(a["data"]["uuid"], b["data"]["uuid"]);
    assert!(a["data"]["uuid"].as_str().unwrap().starts_with("event-"));
}
