//! Session keys that leak nothing: a session keyed by a cookie through
//! `hash` (keyed with `session_secret`), joined by a task id its upload
//! handed out (`session_alias`), across a restart; the cookie reaches no
//! receiver, event, log or metric. And `taphook check` warns about a route
//! that takes a credential raw.

mod common;

use std::time::{Duration, Instant};

use common::{check_rules, Setup, Stack};
use serde_json::{json, Value};
use taphook::filter::HashKey;

const SECRET: &str = "test-session-secret";

/// The routes: a session keyed by a hashed cookie, joined by its task id.
const ROUTES: &str = common::ALIAS_ROUTES;

async fn upload(stack: &Stack, cookie: &str, task: &str, filename: &str) {
    let r = stack
        .client
        .post(stack.url("/_fixtures/echo"))
        .header("cookie", format!("theme=dark; sessionid={cookie}"))
        .json(&json!({"task_id": task, "filename": filename}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn poll(stack: &Stack, task: &str) {
    let r = stack
        .client
        .get(stack.url(&format!("/_fixtures/empty?task={task}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

/// taphook with the routes, every event of both kinds to `/all`.
async fn start() -> Stack {
    Stack::start(Setup {
        rules: vec![(
            "sessions.yaml",
            format!("{ROUTES}webhooks:\n  - key: all\n    url: {{receiver}}/all\n    events: [file_uploaded, import_succeeded]\n"),
        )],
        config: &format!("admin_token: t0k\nsession_secret: {SECRET}\n"),
        ..Default::default()
    })
    .await
}

/// The events the receiver got on `/all` so far.
fn received_now(stack: &Stack) -> Vec<Value> {
    stack
        .receiver
        .received_on("/all")
        .iter()
        .map(|r| r.json())
        .collect()
}

/// The events the receiver got on `/all`, once there are `n`.
async fn received(stack: &Stack, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = received_now(stack);
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_keyed_session_is_joined_by_its_task_id_and_the_cookie_goes_nowhere() {
    let mut stack = start().await;
    let (ada, bob) = ("ada-s3cr3t-cookie-0001", "bob-s3cr3t-cookie-0002");
    upload(&stack, ada, "task-7f3a", "ada.csv").await;
    upload(&stack, bob, "task-91c2", "bob.csv").await;
    received(&stack, 2).await;
    // The alias is kept like the session itself: a restart keeps it.
    stack.restart().await;
    poll(&stack, "task-7f3a").await;
    poll(&stack, "task-91c2").await;
    // Polled twice: one event (dedup_key).
    poll(&stack, "task-7f3a").await;
    received(&stack, 4).await;
    // The second poll of the same task is the same event: dropped.
    common::settle(Duration::from_millis(500)).await;
    let got = received_now(&stack);
    assert_eq!(got.len(), 4, "{got:#?}");
    let key = HashKey::new(SECRET.as_bytes());
    let mut summary: Vec<(String, String, String)> = got
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap().to_string(),
                e["embed_id"].as_str().unwrap().to_string(),
                e["data"].to_string(),
            )
        })
        .collect();
    summary.sort();
    let mut expected = vec![
        ("file_uploaded".to_string(), key.hash(ada), "{}".to_string()),
        ("file_uploaded".to_string(), key.hash(bob), "{}".to_string()),
        (
            "import_succeeded".to_string(),
            key.hash(ada),
            json!({"filename": "ada.csv"}).to_string(),
        ),
        (
            "import_succeeded".to_string(),
            key.hash(bob),
            json!({"filename": "bob.csv"}).to_string(),
        ),
    ];
    expected.sort();
    assert_eq!(summary, expected, "{got:#?}");
    assert_ne!(key.hash(ada), key.hash(bob));

    // The events API and the console's sessions show the hash, never the
    // cookie; nor do the receiver's requests, the log or /metrics.
    let (status, events) = stack
        .api(
            "t0k",
            "GET",
            &format!("/v1/embeds/{}/events", key.hash(ada)),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let listed = events.to_string();
    assert!(listed.contains("import_succeeded"), "{listed}");
    let (_, sessions) = stack.api("t0k", "GET", "/v1/sessions", None).await;
    let mut seen = vec![
        listed,
        sessions.to_string(),
        stack.log(),
        stack.metrics().await,
    ];
    seen.extend(
        stack
            .receiver
            .received_on("/all")
            .iter()
            .map(|r| format!("{:?} {}", r.headers, String::from_utf8_lossy(&r.body))),
    );
    for text in &seen {
        for cookie in [ada, bob] {
            assert!(!text.contains(cookie), "the cookie leaked: {text}");
        }
    }
}

/// The pipeline spreads sessions over lanes (`threads: 2` here): a poll
/// sent the moment its upload is answered is still found by the task id
/// the upload handed out, and each session's log keeps its steps in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_lanes_keep_their_order_and_their_aliases() {
    let stack = start().await;
    const SESSIONS: usize = 40;
    let cookie = |i: usize| format!("lane-cookie-{i:04}");
    futures::future::join_all((0..SESSIONS).map(|i| {
        let stack = &stack;
        async move {
            upload(
                stack,
                &cookie(i),
                &format!("task-{i}"),
                &format!("f{i}.csv"),
            )
            .await;
            poll(stack, &format!("task-{i}")).await;
        }
    }))
    .await;
    let got = received(&stack, 2 * SESSIONS).await;
    assert_eq!(got.len(), 2 * SESSIONS, "{got:#?}");
    let key = HashKey::new(SECRET.as_bytes());
    for i in 0..SESSIONS {
        let session = key.hash(&cookie(i));
        let done: Vec<&Value> = got
            .iter()
            .filter(|e| e["event_type"] == "import_succeeded" && e["embed_id"] == session.as_str())
            .collect();
        assert_eq!(done.len(), 1, "session {i}: {got:#?}");
        assert_eq!(
            done[0]["data"],
            json!({"filename": format!("f{i}.csv")}),
            "session {i}"
        );
        let (status, log) = stack
            .api("t0k", "GET", &format!("/v1/embeds/{session}/events"), None)
            .await;
        assert_eq!(status, 200);
        let types: Vec<&str> = log["events"]
            .as_array()
            .unwrap_or_else(|| panic!("{log}"))
            .iter()
            .map(|e| e["event_type"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            types,
            ["file_uploaded", "import_succeeded"],
            "session {i}: {log}"
        );
    }
}

#[test]
fn check_warns_about_a_credential_taken_raw() {
    let rules = r#"routes:
  - name: raw-cookie
    event: file_uploaded
    method: POST
    path: /upload
    session: $request.cookies.sessionid
    remember:
      token: $request.body.csrf_token
      name: $request.body.name
  - name: hashed
    event: import_submitted
    method: POST
    path: /confirm
    session: {"hash": "$request.cookies.sessionid"}
    data:
      auth: {"cat": ["by ", "$request.headers.authorization"]}
"#;
    let (code, out) = check_rules(&[("raw.yaml", rules)]);
    assert_eq!(code, Some(0), "warnings do not fail the check: {out}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.contains("warning:")).collect();
    assert_eq!(warnings.len(), 3, "{out}");
    assert!(
        warnings[0].ends_with("raw.yaml:6: warning: route `raw-cookie`: `session` takes the cookie `sessionid` unhashed, so every receiver, the events API and the console see it; write {\"hash\": ...} around it (keyed with session_secret)"),
        "{out}"
    );
    assert!(warnings[1].contains("raw.yaml:8: warning: route `raw-cookie`: `token` takes the field `csrf_token` unhashed"), "{out}");
    assert!(warnings[2].contains("raw.yaml:16: warning: route `hashed`: `auth` takes the header `authorization` unhashed"), "{out}");
}
