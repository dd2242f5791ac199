//! What an operator reaches for in an incident, through the admin API
//! (issue 24): a 410'd delivery shown held with every attempt counted,
//! every attempt in full, bulk retry, test events, search, each webhook's
//! history, and tokens with roles and the audit trail.

mod common;

use std::time::Duration;

use common::{settle, webhook, Reply, Setup, Stack};
use serde_json::{json, Value};

const TOKEN: &str = "admin-t0ken";
const READ: &str = "read-t0ken-0123456789";
const OPERATE: &str = "operate-t0ken-0123456789";
const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn ping_rules(hooks: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let webhooks: String = hooks
        .iter()
        .map(|(key, extra)| {
            webhook(
                key,
                &format!("/hooks/{key}"),
                &format!("    events: [ping]\n{extra}"),
            )
        })
        .collect();
    vec![(
        "ping.yaml",
        format!(
            "routes:\n  - name: ping\n    event: ping\n    method: GET\n    path: /_fixtures/empty\n    session: $query.s\n    dedup_key: [\"ping\", \"$query.i\"]\n    data:\n      i: $query.i\n      filename: $query.f\nwebhooks:\n{webhooks}"
        ),
    )]
}

async fn start(hooks: &[(&str, &str)], config: &str) -> Stack {
    Stack::start(Setup {
        rules: ping_rules(hooks),
        config: &format!("admin_token: {TOKEN}\n{config}"),
        ..Default::default()
    })
    .await
}

async fn api(stack: &Stack, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    stack.api(TOKEN, method, path, body).await
}

/// `GET /_fixtures/empty?i=&s=&f=` through the proxy: a `ping` event of
/// session `s` with `data.filename` `f`.
async fn ping(stack: &Stack, i: usize, session: &str, filename: &str) {
    let url = reqwest::Url::parse_with_params(
        &stack.url("/_fixtures/empty"),
        &[
            ("i", i.to_string().as_str()),
            ("s", session),
            ("f", filename),
        ],
    )
    .unwrap();
    let r = stack.client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 204);
}

/// Polls `path` until `done` holds for its body (10 s at most).
async fn wait_until(stack: &Stack, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = api(stack, "GET", path, None).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never got there: {status} {body}\n{}",
            stack.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(page: &Value) -> Vec<i64> {
    page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect()
}

/// Defect 1: a delivery a 410 stopped says so: held (its webhook is
/// disabled, and why), its attempt counted, no next attempt, listed as
/// failed and as held; once enabled it goes out and both attempts count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_stopped_by_a_410_is_held_with_every_attempt_counted() {
    let stack = start(&[("gone", "")], "").await;
    stack.receiver.script("/hooks/gone", &[Reply::Status(410)]);
    ping(&stack, 1, "s1", "a.csv").await;
    stack
        .wait_metric("taphook_webhook_disabled{webhook=\"gone\"}", 1.0)
        .await;
    let failed = wait_until(&stack, "/v1/deliveries?state=failed", |b| {
        !ids(b).is_empty()
    })
    .await;
    let id = ids(&failed)[0];
    let held = wait_until(&stack, "/v1/deliveries?state=held", |b| !ids(b).is_empty()).await;
    assert_eq!(ids(&held), [id]);
    let (_, shown) = api(&stack, "GET", &format!("/v1/deliveries/{id}"), None).await;
    let d = &shown["delivery"];
    assert_eq!(d["state"], "held", "{shown}");
    assert_eq!(d["attempts"], 1, "every attempt counted: {shown}");
    assert_eq!(d["retries_spent"], 0, "a 410 spends no retry: {shown}");
    assert_eq!(d["next_attempt_at"], Value::Null, "{shown}");
    assert_eq!(d["last_status"], "410");
    let reason = d["held_reason"].as_str().unwrap();
    assert!(
        reason.contains("disabled") && reason.contains("410 Gone"),
        "{reason}"
    );
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(shown["attempts"][0]["response"]["status"], 410);
    // The session's timeline reads the same.
    let (_, of_session) = api(&stack, "GET", "/v1/session/deliveries?key=s1", None).await;
    assert_eq!(of_session["deliveries"][0]["state"], "held", "{of_session}");
    // Enabled: it goes out, and is delivered after two attempts.
    assert_eq!(
        api(&stack, "POST", "/v1/event-webhooks/gone/enable", None)
            .await
            .0,
        200
    );
    stack
        .receiver
        .wait_for("/hooks/gone", 2, Duration::from_secs(10))
        .await;
    let done = wait_until(&stack, &format!("/v1/deliveries/{id}"), |b| {
        b["delivery"]["state"] == "delivered"
    })
    .await;
    assert_eq!(done["delivery"]["attempts"], 2, "{done}");
    assert_eq!(done["delivery"]["retries_spent"], 1, "{done}");
    let (_, held) = api(&stack, "GET", "/v1/deliveries?state=held", None).await;
    assert!(ids(&held).is_empty(), "{held}");
}

/// Item 4: each attempt shows what was sent (method, URL without its
/// credentials, headers with the signature and without the secret, the
/// body's size, a link to the payload) and what came back (status,
/// headers with cookie values masked, the body's first 4 KiB, timings),
/// or the error with its kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_shown_in_full_without_a_secret() {
    let signed = format!(
        "    secret: basic-pass-word\n    signing: {{ scheme: standard-webhooks, secrets: [{SECRET_A}] }}\n    retry: {{ on: [500], max_retries: 3, backoff: [50ms] }}\n"
    );
    let refused = "    retry: { max_retries: 0 }\n";
    let mut rules = ping_rules(&[("full", &signed)]);
    // Userinfo and a token in the query: neither may show.
    rules[0].1 = rules[0].1.replace(
        "url: {receiver}/hooks/full",
        "url: http://hook-user:url-pass@{receiver_addr}/hooks/full?token=query-secret&team=7",
    );
    rules.push((
        "refused.yaml",
        format!(
            "webhooks:\n  - key: refused\n    url: http://10.255.255.1:9/in\n    events: [ping]\n{refused}"
        ),
    ));
    let stack = Stack::start(Setup {
        rules,
        config: &format!("admin_token: {TOKEN}\n"),
        allow_private_networks: Some("[127.0.0.0/8]"),
        ..Default::default()
    })
    .await;
    stack
        .receiver
        .script("/hooks/full", &[Reply::Verbose(500), Reply::Status(200)]);
    ping(&stack, 1, "s1", "a.csv").await;
    let page = wait_until(&stack, "/v1/deliveries?state=delivered&webhook=full", |b| {
        !ids(b).is_empty()
    })
    .await;
    let id = ids(&page)[0];
    let (_, shown) = api(&stack, "GET", &format!("/v1/deliveries/{id}"), None).await;
    let text = shown.to_string();
    for secret in [
        "url-pass",
        "hook-user",
        "query-secret",
        "basic-pass-word",
        "receiver-secret-cookie",
        SECRET_A,
    ] {
        assert!(!text.contains(secret), "`{secret}` shown: {text}");
    }
    let attempts = shown["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{shown}");
    let first = &attempts[0];
    let request = &first["request"];
    assert_eq!(request["method"], "POST");
    let url = request["url"].as_str().unwrap();
    assert_eq!(url, format!("http://{}/hooks/full?…", stack.receiver.addr));
    let header = |headers: &Value, name: &str| -> Option<String> {
        headers
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_string())
    };
    assert!(header(&request["headers"], "webhook-signature")
        .unwrap()
        .starts_with("v1,"));
    assert!(header(&request["headers"], "webhook-id").is_some());
    assert_eq!(
        header(&request["headers"], "authorization").unwrap(),
        "Basic ********"
    );
    let sent = &stack.receiver.received_on("/hooks/full")[0];
    assert_eq!(request["body_bytes"], sent.body.len());
    let payload_url = request["payload_url"].as_str().unwrap();
    let (status, payload) = api(&stack, "GET", payload_url, None).await;
    assert_eq!(status, 200);
    assert_eq!(payload, sent.json(), "the payload link shows the body sent");
    let response = &first["response"];
    assert_eq!(response["status"], 500);
    assert_eq!(
        header(&response["headers"], "x-receiver").unwrap(),
        "taphook-demo"
    );
    assert_eq!(
        header(&response["headers"], "set-cookie").unwrap(),
        "rid=********; Path=/; HttpOnly"
    );
    assert_eq!(response["body"].as_str().unwrap().len(), 4096);
    assert_eq!(response["body_truncated"], true);
    let (ttfb, total) = (
        response["first_byte_ms"].as_u64().unwrap(),
        response["total_ms"].as_u64().unwrap(),
    );
    assert!(ttfb <= total, "{response}");
    assert_eq!(attempts[1]["response"]["status"], 200);
    // Refused by the SSRF guard: the error and its kind, no response.
    let page = wait_until(&stack, "/v1/deliveries?state=dead&webhook=refused", |b| {
        !ids(b).is_empty()
    })
    .await;
    let (_, refused) = api(
        &stack,
        "GET",
        &format!("/v1/deliveries/{}", ids(&page)[0]),
        None,
    )
    .await;
    let error = &refused["attempts"][0]["response"]["error"];
    assert_eq!(error["kind"], "ssrf", "{refused}");
    assert!(error["message"].as_str().unwrap().contains("SSRF"));
    assert_eq!(refused["attempts"][0]["response"]["status"], Value::Null);
}

/// Item 4: a connection refused and a timeout each name their kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_name_their_kind() {
    let closed = taphook::demo::free_port().unwrap();
    let mut rules = ping_rules(&[(
        "slow",
        "    timeout: 200ms\n    retry: { max_retries: 0 }\n",
    )]);
    rules.push((
        "closed.yaml",
        format!("webhooks:\n  - key: closed\n    url: http://127.0.0.1:{closed}/in\n    events: [ping]\n    retry: {{ max_retries: 0 }}\n"),
    ));
    let stack = Stack::start(Setup {
        rules,
        config: &format!("admin_token: {TOKEN}\n"),
        ..Default::default()
    })
    .await;
    stack
        .receiver
        .script("/hooks/slow", &[Reply::Slow(2000, 200)]);
    ping(&stack, 1, "s1", "a.csv").await;
    for (key, kind) in [("slow", "timeout"), ("closed", "connect")] {
        let page = wait_until(
            &stack,
            &format!("/v1/deliveries?state=dead&webhook={key}"),
            |b| !ids(b).is_empty(),
        )
        .await;
        let (_, shown) = api(
            &stack,
            "GET",
            &format!("/v1/deliveries/{}", ids(&page)[0]),
            None,
        )
        .await;
        assert_eq!(
            shown["attempts"][0]["response"]["error"]["kind"], kind,
            "{shown}"
        );
    }
}

/// Item 5: bulk retry by webhook, state, session and time, with a dry run
/// that changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_retry_counts_first_then_sends_again() {
    let stack = start(&[("bulk", "    retry: { max_retries: 0 }\n")], "").await;
    stack
        .receiver
        .default_reply("/hooks/bulk", Reply::Status(500));
    for (i, s) in [(1, "a"), (2, "a"), (3, "b")] {
        ping(&stack, i, s, "x.csv").await;
    }
    wait_until(&stack, "/v1/deliveries?state=dead", |b| ids(b).len() == 3).await;
    let stack = &stack;
    let retry =
        |body: Value| async move { api(stack, "POST", "/v1/deliveries/retry", Some(body)).await };
    let (status, dry) = retry(json!({"webhook": "bulk", "state": "dead", "dry_run": true})).await;
    assert_eq!((status, dry.clone()), (200, json!({"would_requeue": 3})));
    let (_, dry) = retry(json!({"state": "dead", "session": "b", "dry_run": true})).await;
    assert_eq!(dry, json!({"would_requeue": 1}));
    let (_, dry) =
        retry(json!({"state": "dead", "since": "2099-01-01T00:00:00Z", "dry_run": true})).await;
    assert_eq!(dry, json!({"would_requeue": 0}));
    settle(Duration::from_millis(300)).await;
    assert_eq!(
        stack.receiver.received_on("/hooks/bulk").len(),
        3,
        "a dry run sends nothing"
    );
    stack
        .receiver
        .default_reply("/hooks/bulk", Reply::Status(200));
    let (status, done) = retry(json!({"webhook": "bulk", "session": "a"})).await;
    assert_eq!((status, done), (200, json!({"requeued": 2})));
    stack
        .receiver
        .wait_for("/hooks/bulk", 5, Duration::from_secs(10))
        .await;
    wait_until(stack, "/v1/deliveries?state=delivered", |b| {
        ids(b).len() == 2
    })
    .await;
    let (_, dead) = api(stack, "GET", "/v1/deliveries?state=dead", None).await;
    assert_eq!(dead["deliveries"][0]["session"], "b");
    let (status, bad) = retry(json!({"state": "pending"})).await;
    assert_eq!(status, 400, "{bad}");
    let (status, _) = retry(json!({"webhook": "nope"})).await;
    assert_eq!(status, 404);
}

/// Item 5: a test event goes through the webhook's real format and
/// signing, marked as a test by `Taphook-Test: 1` and in the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_goes_out_signed_and_marked() {
    let signed = format!("    signing: {{ scheme: standard-webhooks, secrets: [{SECRET_A}] }}\n");
    let stack = start(&[("t", &signed)], "").await;
    let (status, sent) = api(
        &stack,
        "POST",
        "/v1/event-webhooks/t/test",
        Some(json!({"event_type": "ping"})),
    )
    .await;
    assert_eq!(status, 202, "{sent}");
    assert_eq!(sent["test"], true);
    let got = stack
        .receiver
        .wait_for("/hooks/t", 1, Duration::from_secs(10))
        .await;
    let request = &got[0];
    assert_eq!(request.header("taphook-test"), Some("1"));
    assert_eq!(request.json()["event_type"], "ping");
    standardwebhooks::Webhook::new(SECRET_A)
        .unwrap()
        .verify(&request.body, &request.headers)
        .expect("the test event is signed like any delivery");
    let id = sent["delivery_id"].as_i64().unwrap();
    let (_, shown) = api(&stack, "GET", &format!("/v1/deliveries/{id}"), None).await;
    assert_eq!(shown["delivery"]["test"], true, "{shown}");
    // A type the webhook does not take, and an unknown webhook.
    let (status, e) = api(
        &stack,
        "POST",
        "/v1/event-webhooks/t/test",
        Some(json!({"event_type": "file_uploaded"})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("ping"),
        "{e}"
    );
    let (status, _) = api(
        &stack,
        "POST",
        "/v1/event-webhooks/nope/test",
        Some(json!({"event_type": "ping"})),
    )
    .await;
    assert_eq!(status, 404);
}

/// Item 6: one query finds a delivery by id, events by UUID or by a
/// data field, a session by key and a webhook by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_sessions_events_deliveries_and_webhooks() {
    let stack = start(&[("found", "")], "").await;
    ping(&stack, 1, "sess-one", "contacts.csv").await;
    ping(&stack, 2, "sess-two", "orders.csv").await;
    stack
        .receiver
        .wait_for("/hooks/found", 2, Duration::from_secs(10))
        .await;
    let stack = &stack;
    let search = |q: &str| {
        let path = format!("/v1/search?q={}", urlencode(q));
        async move { api(stack, "GET", &path, None).await.1 }
    };
    let by_field = wait_until(
        stack,
        &format!("/v1/search?q={}", urlencode("filename=contacts.csv")),
        |b| {
            b["events"].as_array().is_some_and(|e| e.len() == 1)
                && !b["deliveries"].as_array().unwrap().is_empty()
        },
    )
    .await;
    assert_eq!(
        by_field["events"][0]["event"]["data"]["filename"],
        "contacts.csv"
    );
    assert_eq!(by_field["sessions"][0]["session_key"], "sess-one");
    let uuid = by_field["events"][0]["event"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let delivery = by_field["deliveries"][0]["id"].as_i64().unwrap();
    let by_uuid = search(&uuid).await;
    assert_eq!(by_uuid["events"].as_array().unwrap().len(), 1, "{by_uuid}");
    assert_eq!(by_uuid["deliveries"][0]["id"], delivery);
    let by_id = search(&delivery.to_string()).await;
    assert_eq!(
        by_id["deliveries"][0]["event_uuid"],
        uuid.as_str(),
        "{by_id}"
    );
    let by_session = search("sess-two").await;
    assert_eq!(
        by_session["sessions"][0]["session_key"], "sess-two",
        "{by_session}"
    );
    assert!(by_session["events"].as_array().unwrap().is_empty());
    let by_webhook = search("found").await;
    assert_eq!(by_webhook["webhooks"][0]["webhook_key"], "found");
    // An event's embed JWT is masked here as in the events API.
    let jwt = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXNlc3Npb24.sig";
    let pushed = json!({"event_type": "ping", "embed_id": "sess-jwt", "embed_jwt": jwt, "data": {"filename": "jwt.csv"}});
    assert_eq!(api(stack, "POST", "/v1/events", Some(pushed)).await.0, 202);
    let with_jwt = search("filename=jwt.csv").await;
    assert_eq!(
        with_jwt["events"][0]["event"]["embed_jwt"], "********",
        "{with_jwt}"
    );
    assert!(!with_jwt.to_string().contains(jwt));
    let nothing = search("filename=nothing.csv").await;
    assert!(nothing["events"].as_array().unwrap().is_empty());
    assert_eq!(api(stack, "GET", "/v1/search?q=", None).await.0, 400);
}

fn urlencode(q: &str) -> String {
    url::form_urlencoded::byte_serialize(q.as_bytes()).collect()
}

/// Item 7: attempts by outcome and their latency per hour, kept across a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_history_counts_attempts_per_hour_across_a_restart() {
    let mut stack = start(
        &[(
            "h",
            "    retry: { on: [503], max_retries: 3, backoff: [50ms] }\n",
        )],
        "",
    )
    .await;
    stack
        .receiver
        .script("/hooks/h", &[Reply::Status(503), Reply::Slow(100, 200)]);
    ping(&stack, 1, "s", "a.csv").await;
    ping(&stack, 2, "s", "a.csv").await;
    stack
        .receiver
        .wait_for("/hooks/h", 3, Duration::from_secs(10))
        .await;
    let check = |b: &Value| {
        let hours = b["hours"].as_array().unwrap();
        let last = &hours[hours.len() - 1];
        hours.len() == 169
            && last["attempts"] == 3
            && last["outcomes"]["5xx"] == 1
            && last["outcomes"]["2xx"] == 2
    };
    let history = wait_until(&stack, "/v1/event-webhooks/h/history", check).await;
    let last = history["hours"].as_array().unwrap().last().unwrap().clone();
    let p99 = last["p99_ms"].as_f64().unwrap();
    assert!(p99 >= 100.0, "the slow answer is the p99: {last}");
    assert!(last["p50_ms"].as_f64().unwrap() <= p99);
    // Written within seconds, and read back after a restart.
    settle(Duration::from_secs(6)).await;
    stack.restart().await;
    let (_, after) = api(&stack, "GET", "/v1/event-webhooks/h/history", None).await;
    assert!(check(&after), "{after}");
    assert_eq!(
        api(&stack, "GET", "/v1/event-webhooks/nope/history", None)
            .await
            .0,
        404
    );
}

/// Item 8: tokens with roles; a call beyond its role is a 403 naming the
/// role needed; every change is in the audit trail under the token's
/// name, newest first, and no token is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_and_the_audit_trail() {
    let config = format!(
        "admin_tokens:\n  - {{name: alice-read, token: {READ}, role: read}}\n  - {{name: oscar-ops, token: {OPERATE}, role: operate}}\n"
    );
    let stack = start(&[("r", "    retry: { max_retries: 0 }\n")], &config).await;
    stack.receiver.default_reply("/hooks/r", Reply::Status(500));
    ping(&stack, 1, "s", "a.csv").await;
    let dead = wait_until(&stack, "/v1/deliveries?state=dead", |b| !ids(b).is_empty()).await;
    let id = ids(&dead)[0];
    let (status, me) = stack.api(READ, "GET", "/v1/whoami", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        me,
        json!({"name": "alice-read", "role": "read", "store": "embedded", "can": {"read": true, "operate": false, "admin": false}})
    );
    // read: reads, cannot retry.
    assert_eq!(
        stack
            .api(READ, "GET", "/v1/deliveries?state=dead", None)
            .await
            .0,
        200
    );
    let (status, e) = stack
        .api(READ, "POST", &format!("/v1/deliveries/{id}/retry"), None)
        .await;
    assert_eq!(status, 403);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`operate`"),
        "{e}"
    );
    // operate: retries and tests, cannot change a webhook.
    stack.receiver.default_reply("/hooks/r", Reply::Status(200));
    let (status, _) = stack
        .api(OPERATE, "POST", &format!("/v1/deliveries/{id}/retry"), None)
        .await;
    assert_eq!(status, 202);
    let (status, e) = stack
        .api(OPERATE, "DELETE", "/v1/event-webhooks/r", None)
        .await;
    assert_eq!(status, 403);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("`admin`"),
        "{e}"
    );
    // admin (admin_token): everything.
    let (status, _) = api(&stack, "POST", "/v1/event-webhooks/r/enable", None).await;
    assert_eq!(status, 200);
    let (status, audit) = stack.api(READ, "GET", "/v1/audit?limit=2", None).await;
    assert_eq!(status, 200);
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["token_name"], "admin_token");
    assert_eq!(entries[0]["action"], "POST /v1/event-webhooks/{key}/enable");
    assert_eq!(entries[0]["target"], "/v1/event-webhooks/r/enable");
    assert_eq!(entries[0]["outcome"]["status"], 200);
    assert_eq!(entries[1]["token_name"], "oscar-ops");
    assert_eq!(entries[1]["outcome"]["result"], "forbidden");
    assert_eq!(entries[1]["outcome"]["needed_role"], "admin");
    assert_eq!(audit["has_next_page"], true);
    let cursor = audit["next_cursor"].as_str().unwrap();
    let (_, older) = stack
        .api(READ, "GET", &format!("/v1/audit?cursor={cursor}"), None)
        .await;
    let older = older["entries"].as_array().unwrap();
    assert_eq!(older.len(), 2, "{older:?}");
    assert_eq!(older[0]["token_name"], "oscar-ops");
    assert_eq!(older[0]["target"], format!("/v1/deliveries/{id}/retry"));
    assert_eq!(older[0]["outcome"]["status"], 202);
    assert_eq!(older[1]["token_name"], "alice-read");
    assert_eq!(older[1]["outcome"]["status"], 403);
    // Reads are not audited; tokens are not stored or logged.
    let everything = format!("{audit}{older:?}{}", stack.log());
    for token in [TOKEN, READ, OPERATE] {
        assert!(!everything.contains(token), "a token leaked");
    }
    let db = std::fs::read(stack.dir.path().join("data").join("taphook.db")).unwrap_or_default();
    let db = String::from_utf8_lossy(&db);
    assert!(!db.contains(READ) && !db.contains(OPERATE));
    assert_eq!(stack.api("wrong", "GET", "/v1/whoami", None).await.0, 401);
}

/// Item 8: a malformed token list is a config error naming the key.
#[test]
fn duplicate_token_names_are_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::hand_config(
        dir.path(),
        "http://127.0.0.1:9",
        "admin_tokens:\n  - {name: a, token: t1, role: read}\n  - {name: a, token: t2, role: admin}\n  - {name: b, token: t3, role: owner}\n",
    );
    let (ok, text) = common::taphook_output(&["check", "--config"], &config.path);
    assert!(!ok, "{text}");
    assert!(text.contains("taphook.yaml:"), "{text}");
    assert!(
        text.contains("role") || text.contains("`a` is used by another token"),
        "{text}"
    );
}
