//! The admin API the console reads (sessions, a session's deliveries,
//! the overview, webhook stats, problems at their fields), and how the
//! console's files are served (strict headers, closed without a token).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "t0k";

async fn api(stack: &Stack, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    stack.api(TOKEN, method, path, body).await
}

async fn get(stack: &Stack, path: &str) -> Value {
    let (status, body) = api(stack, "GET", path, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Polls `GET path` until `done` holds.
async fn until(stack: &Stack, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = api(stack, "GET", path, None).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "GET {path}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn keys(body: &Value) -> Vec<String> {
    body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_newest_first_searched_and_paged() {
    let stack = Stack::start(Setup {
        config: &format!("admin_token: {TOKEN}\n"),
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    // `_` and `%` in a search are the characters themselves.
    for template in ["a_b", "axb", "100%"] {
        ids.push(
            stack
                .create_embed(json!({"template_key": template}), false)
                .await
                .to_string(),
        );
        // Distinct last-event times, so the order is the creation order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = until(&stack, "/v1/sessions", |b| {
        b["sessions"].as_array().unwrap().len() == 3
    })
    .await;
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(keys(&all), newest_first);
    let first = &all["sessions"][0];
    assert_eq!(first["template_key"], "100%");
    assert_eq!(first["stage"], "initialized");
    assert_eq!(first["last_event_type"], "embed_initialized");
    assert_eq!(first["stalled"], false);
    assert!(first["reached"]["initialized"].as_i64().unwrap() > 1_700_000_000_000);

    assert_eq!(
        keys(&get(&stack, "/v1/sessions?q=a_b").await),
        [ids[0].clone()]
    );
    assert_eq!(
        keys(&get(&stack, "/v1/sessions?q=0%25").await),
        [ids[2].clone()]
    );
    assert_eq!(
        keys(&get(&stack, &format!("/v1/sessions?q={}", ids[1])).await),
        [ids[1].clone()]
    );
    assert_eq!(
        keys(&get(&stack, "/v1/sessions?q=nothing-like-it").await),
        Vec::<String>::new()
    );

    let page = get(&stack, "/v1/sessions?limit=2").await;
    assert_eq!(keys(&page), newest_first[..2]);
    assert_eq!(page["has_next_page"], true);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = get(&stack, &format!("/v1/sessions?limit=2&cursor={cursor}")).await;
    assert_eq!(keys(&rest), newest_first[2..]);
    assert_eq!(rest["has_next_page"], false);
    assert_eq!(
        api(&stack, "GET", "/v1/sessions?cursor=bad", None).await.0,
        400
    );
    assert_eq!(
        api(&stack, "GET", "/v1/sessions?limit=0", None).await.0,
        400
    );

    let one = get(&stack, &format!("/v1/sessions/{}", ids[1])).await;
    assert_eq!(one["session"]["template_key"], "axb");
    // The key as the importer typed it: a number.
    assert_eq!(
        one["session"]["embed_id"],
        json!(ids[1].parse::<u64>().unwrap())
    );
    assert_eq!(
        api(&stack, "GET", "/v1/sessions/no-such", None).await.0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_deliveries_the_overview_and_webhook_stats() {
    let hooks = [
        webhook("analytics", "/hooks/analytics", "    events: [\"*\"]\n"),
        webhook(
            "crm",
            "/hooks/crm",
            "    events: [embed_initialized]\n    retry: { max_retries: 0 }\n",
        ),
    ];
    let stack = Stack::start(Setup {
        config: &format!("admin_token: {TOKEN}\n"),
        rules: vec![("hooks.yaml", format!("webhooks:\n{}", hooks.concat()))],
        ..Default::default()
    })
    .await;
    stack
        .receiver
        .default_reply("/hooks/crm", Reply::Status(500));
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl";
    let id = stack
        .create_embed(
            json!({"template_key": "contacts", "embed_user_jwt": jwt}),
            true,
        )
        .await;
    stack.finish_session(id).await;
    let other = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    let events = until(&stack, &format!("/v1/embeds/{id}/events"), |b| {
        b["events"].as_array().unwrap().len() == 8
    })
    .await;
    let uuids: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["uuid"].as_str().unwrap())
        .collect();
    stack
        .receiver
        .wait_for("/hooks/analytics", 9, Duration::from_secs(15))
        .await;

    // Every delivery of the session's events, and only of them.
    let path = format!("/v1/sessions/{id}/deliveries");
    let all = until(&stack, &path, |b| {
        let d = b["deliveries"].as_array().unwrap();
        d.len() == 9 && d.iter().all(|d| d["state"] != "pending")
    })
    .await;
    let deliveries = all["deliveries"].as_array().unwrap();
    assert_eq!(all["truncated"], false);
    let key = id.to_string();
    assert!(deliveries.iter().all(|d| d["session"] == key.as_str()));
    assert!(deliveries
        .iter()
        .all(|d| uuids.contains(&d["event_uuid"].as_str().unwrap())));
    let by = |webhook: &str, state: &str| {
        deliveries
            .iter()
            .filter(|d| d["webhook"] == webhook && d["state"] == state)
            .count()
    };
    assert_eq!((by("analytics", "delivered"), by("crm", "dead")), (8, 1));

    // `GET /v1/deliveries` by session.
    let dead = get(&stack, &format!("/v1/deliveries?state=dead&session={id}")).await;
    let dead = dead["deliveries"].as_array().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["event_type"], "embed_initialized");
    // The other session's dead delivery is recorded on its own time.
    let dead_other = until(
        &stack,
        &format!("/v1/deliveries?state=dead&session={other}"),
        |b| !b["deliveries"].as_array().unwrap().is_empty(),
    )
    .await;
    assert_eq!(dead_other["deliveries"].as_array().unwrap().len(), 1);
    assert_ne!(dead_other["deliveries"][0]["id"], dead[0]["id"]);

    // A delivery's page: its payload as its format sends it, the JWT masked.
    let shown = get(&stack, &format!("/v1/deliveries/{}", dead[0]["id"])).await;
    let payload = &shown["payload"][0];
    assert_eq!(payload["event_type"], "embed_initialized");
    assert_eq!(payload["embed_id"], json!(id));
    assert_eq!(payload["embed_jwt"], "********");
    assert!(!shown.to_string().contains(jwt), "{shown}");
    assert_eq!(shown["attempts"][0]["outcome"], "500");

    // The webhooks' numbers: attempts in the last hour, pending and dead.
    let analytics = get(&stack, "/v1/event-webhooks/analytics/stats").await;
    assert_eq!(analytics["pending"], 0);
    assert_eq!(analytics["dead"], 0);
    assert_eq!(analytics["last_hour"]["attempts"], 9);
    assert_eq!(analytics["last_hour"]["success_rate"], 1.0);
    let crm = get(&stack, "/v1/event-webhooks/crm/stats").await;
    assert_eq!(crm["dead"], 2);
    assert_eq!(crm["last_hour"]["failed"], 2);
    assert_eq!(crm["last_hour"]["success_rate"], 0.0);
    assert_eq!(
        api(&stack, "GET", "/v1/event-webhooks/nope/stats", None)
            .await
            .0,
        404
    );

    // The overview: this hour's events and attempts, the funnel per template.
    let overview = get(&stack, "/v1/overview").await;
    let minutes = overview["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 61);
    let sum = |k: &str| minutes.iter().map(|m| m[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("events"), sum("delivered"), sum("failed")), (9, 9, 2));
    assert!(minutes
        .windows(2)
        .all(|w| w[1]["at"].as_i64() > w[0]["at"].as_i64()));
    assert_eq!(
        overview["funnel"],
        json!([{
            "template_key": "contacts",
            "stalled": 0,
            "stages": {"initialized": 2, "uploaded": 1, "header_selected": 1, "mapped": 1, "submitted": 1, "closed": 1},
        }])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_webhook_names_the_fields_at_fault() {
    let stack = Stack::start(Setup {
        config: &format!("admin_token: {TOKEN}\n"),
        ..Default::default()
    })
    .await;
    let url = stack.receiver.url("/hooks/x");
    let (status, body) = api(
        &stack,
        "POST",
        "/v1/event-webhooks",
        Some(
            json!({"webhook_key": "x", "url": url, "events": ["no_such_event"], "format": "nope"}),
        ),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let fields = body["error"]["fields"].as_object().unwrap();
    let at = |f: &str| {
        fields[f].as_array().unwrap()[0]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        at("events").contains("unknown event type `no_such_event`"),
        "{body}"
    );
    assert!(at("format").contains("nope"), "{body}");
    assert!(!fields.contains_key("url"), "{body}");
    assert!(!body["error"]["problems"].as_array().unwrap().is_empty());

    let (status, _) = api(
        &stack,
        "POST",
        "/v1/event-webhooks",
        Some(json!({"webhook_key": "x", "url": url, "events": ["*"]})),
    )
    .await;
    assert_eq!(status, 201);
    // An edit names the API's field (`secret_key`, not the rules' `secret`).
    let (status, body) = api(
        &stack,
        "PUT",
        "/v1/event-webhooks/x",
        Some(json!({"secret_key": 42})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let fields = body["error"]["fields"].as_object().unwrap();
    assert_eq!(fields.keys().collect::<Vec<_>>(), ["secret_key"], "{body}");
    let (status, body) = api(
        &stack,
        "PUT",
        "/v1/event-webhooks/x",
        Some(json!({"filter": {"no_such_op": []}})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let fields = body["error"]["fields"].as_object().unwrap();
    assert_eq!(fields.keys().collect::<Vec<_>>(), ["filter"], "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_strict_headers_and_its_data_stays_closed_without_a_token() {
    // No admin_token: the console's files load, its data does not.
    let stack = Stack::start(Setup::default()).await;
    let base = format!("http://{}", stack.admin);
    let no_redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect
        .get(format!("{base}/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/console/");

    let r = stack
        .client
        .get(format!("{base}/console/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-frame-options"], "DENY");
    let csp = h["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    let html = r.text().await.unwrap();
    // No inline script or style: every script has a src.
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains(r#"<script type="module" src="app.js"></script>"#));
    assert!(!html.contains("<style") && !html.contains("style="));

    for (path, ct) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let r = stack
            .client
            .get(format!("{base}/console/{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ct, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    let script = stack
        .client
        .get(format!("{base}/console/app.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for sink in [
        ".innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!script.contains(sink), "the console uses {sink}");
    }

    // The API answers with the same headers, and stays closed.
    let r = stack
        .client
        .get(format!("{base}/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        r.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("closed"));
    for path in [
        "/v1/overview",
        "/v1/sessions/1",
        "/v1/sessions/1/deliveries",
        "/v1/event-webhooks/x/stats",
    ] {
        assert_eq!(stack.admin_status(path).await, 401, "{path}");
    }
}
