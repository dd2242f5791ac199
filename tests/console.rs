//! The web console in a real browser: headless Chromium driven through
//! chromedriver (WebDriver over HTTP on loopback), against the real
//! taphook binary, the reference importer and the recording receiver.
//! `make test` installs `chromium` and `chromium-driver` when missing.
//! Screenshots of each page land in `target/console/`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use taphook::demo::{free_port, multipart_file};

const TOKEN: &str = "console-t0k";
/// What a hostile end user types into the importer: markup, an event
/// handler, a `javascript:` URL and template syntax.
const HOSTILE_TEMPLATE: &str = "<img src=x onerror=alert(1)>{{7*7}}<script>alert(2)</script>";
const HOSTILE_FILE: &str = "javascript:alert(3)<img src=x onerror=alert(4)>.csv";
const WAIT: Duration = Duration::from_secs(20);
/// Sessions pushed besides the two, so the list has a second page.
const BULK: usize = 55;

/// chromedriver on a free loopback port, and a browser session on it.
struct Browser {
    driver: Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// chromedriver, and every Chromium process of this test's profile:
    /// killing chromedriver alone would leave the browser running when a
    /// test fails before closing its session.
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", "--"])
            .arg(format!(
                "--user-data-dir={}",
                self._profile.path().display()
            ))
            .status();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

async fn browser() -> Browser {
    let driver_bin = which("chromedriver").expect(
        "chromedriver is not installed: `make test-prereqs` installs chromium and chromium-driver",
    );
    let port = free_port().unwrap();
    let driver = Command::new(driver_bin)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let http = client();
    let deadline = Instant::now() + WAIT;
    while http.get(format!("{url}/status")).send().await.is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let mut options = json!({
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1000", "--no-first-run", "--disable-quic",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-default-apps", "--no-proxy-server",
            format!("--user-data-dir={}", profile.path().display()),
        ],
    });
    if let Some(chromium) = which("chromium") {
        options["binary"] = json!(chromium);
    }
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": options,
        "goog:loggingPrefs": {"browser": "ALL"},
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&url)
        .await
        .expect("a chromium session");
    Browser {
        driver,
        client,
        _profile: profile,
    }
}

/// chromedriver's log of the page's console (`goog:loggingPrefs`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// The page console's errors since the last call (CSP violations and
/// script errors show here).
async fn console_errors(c: &Client) -> Vec<String> {
    let log = c.issue_cmd(BrowserLog).await.expect("the browser log");
    log.as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["level"] == "SEVERE")
        .map(|entry| entry["message"].as_str().unwrap_or_default().to_string())
        // Chromium asks for /favicon.ico on its own; the console links its icon.
        .filter(|m| !m.contains("favicon.ico"))
        .collect()
}

/// Waits until the element `css` has text containing `want`; its text.
async fn wait_text(c: &Client, css: &str, want: &str) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(text) = e.text().await {
                if text.contains(want) {
                    return text;
                }
                last = text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "`{css}` never showed {want:?}; it showed {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `css` matches `n` elements.
async fn wait_count(c: &Client, css: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = c
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |all| all.len());
        if found == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{css}` matched {found}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("`{css}` not found: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("`{css}` not clickable: {e}"));
}

async fn fill(c: &Client, css: &str, text: &str) {
    let field = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("`{css}` not found: {e}"));
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn screenshot(c: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Goes to a console page by its hash, without reloading the page.
async fn open(c: &Client, hash: &str) {
    c.execute("location.hash = arguments[0]", vec![json!(hash)])
        .await
        .unwrap();
}

fn rules() -> Vec<(&'static str, String)> {
    let hooks = [
        webhook(
            "analytics",
            "/hooks/analytics",
            "    events: [\"*\"]\n    rate_limit: { per_second: 1000, burst: 100 }\n",
        ),
        webhook(
            "crm",
            "/hooks/crm",
            "    events: [import_submitted]\n    retry: { max_retries: 0 }\n    ordering: session\n",
        ),
        webhook("audit", "/hooks/audit", "    events: [embed_initialized]\n"),
    ];
    vec![("hooks.yaml", format!("webhooks:\n{}", hooks.concat()))]
}

async fn api(stack: &Stack, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    stack.api(TOKEN, method, path, body).await
}

/// Polls the admin API until `done` holds for the answer to `GET path`.
async fn api_until(stack: &Stack, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = api(stack, "GET", path, None).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "GET {path}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_follows_sessions_and_fixes_deliveries_from_the_console() {
    let stack = Stack::start(Setup {
        rules: rules(),
        config: &format!("admin_token: {TOKEN}\n"),
        ..Default::default()
    })
    .await;
    // The CRM receiver fails its first delivery (a dead letter: no
    // retries); the audit receiver answers 410 Gone (disabled).
    stack.receiver.script("/hooks/crm", &[Reply::Status(500)]);
    stack.receiver.script("/hooks/audit", &[Reply::Status(410)]);

    // One whole session through the proxy, and one with hostile values.
    let id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack.finish_session(id).await;
    let hostile = stack
        .create_embed(json!({"template_key": HOSTILE_TEMPLATE}), false)
        .await;
    let (ct, body) = multipart_file(HOSTILE_FILE, "name\n<b>Ada</b>\n");
    stack
        .post(&format!("/v1/embeds/{hostile}/upload"), &ct, body)
        .await;

    // A whole session through the reference importer is 8 events.
    let events = 8;
    // Sessions enough for a second page.
    for i in 0..BULK {
        let event = json!({"event_type": "embed_initialized", "embed_id": format!("bulk-{i}"), "template_key": "bulk"});
        assert_eq!(api(&stack, "POST", "/v1/events", Some(event)).await.0, 202);
    }
    api_until(&stack, &format!("/v1/embeds/{id}/events"), |b| {
        b["events"].as_array().is_some_and(|e| e.len() == events)
    })
    .await;
    stack
        .receiver
        .wait_for("/hooks/analytics", events + 2 + BULK, WAIT)
        .await;
    let dead = api_until(&stack, "/v1/deliveries?state=dead&webhook=crm", |b| {
        b["deliveries"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await["deliveries"][0]["id"]
        .as_i64()
        .unwrap();
    api_until(&stack, "/v1/event-webhooks/audit", |b| {
        b["disabled"].is_string()
    })
    .await;

    let browser = browser().await;
    let c = &browser.client;
    let console = format!("http://{}/console/", stack.admin);

    // Sign in: a wrong token is refused with the API's reason.
    c.goto(&console).await.unwrap();
    fill(c, "#token", "not-the-token").await;
    click(c, "#signin button[type=submit]").await;
    wait_text(c, "#signin-error", "wrong bearer token").await;
    fill(c, "#token", TOKEN).await;
    click(c, "#signin button[type=submit]").await;
    wait_text(c, "h1", "Overview").await;
    let stored: Value = c
        .execute(
            "return [sessionStorage.getItem('taphook.admin_token'), document.cookie]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        stored,
        json!([TOKEN, ""]),
        "the token is in session storage, no cookie"
    );

    // Traps for anything the hostile values could make run.
    c.execute(
        "window.__ran = []; window.alert = (m) => window.__ran.push(String(m));
         document.addEventListener('securitypolicyviolation', (e) => window.__ran.push('csp ' + e.violatedDirective));",
        vec![],
    )
    .await
    .unwrap();

    // The overview: this hour's events and the funnel per template.
    let total = wait_text(c, "#events-hour", "").await;
    assert!(total.parse::<usize>().unwrap() >= events + 2, "{total}");
    wait_text(c, "#overview table", "contacts").await;
    screenshot(c, "overview").await;

    // Sessions: the newest 50, and More for the rest.
    click(c, "nav a[data-section=sessions]").await;
    wait_count(c, "#sessions tbody tr", 50).await;
    click(c, "#sessions button.more").await;
    wait_count(c, "#sessions tbody tr", BULK + 2).await;
    wait_count(c, "#sessions button.more", 0).await;
    // Find the session by its template, open its timeline.
    fill(c, "#session-search", "contac").await;
    click(c, "main form button[type=submit]").await;
    wait_count(c, "#sessions tbody tr", 1).await;
    let row = wait_text(c, "#sessions tbody tr", &id.to_string()).await;
    assert!(row.contains("contacts") && row.contains("closed"), "{row}");
    click(c, &format!("#sessions tbody a[href='#/sessions/{id}']")).await;
    wait_count(c, "#timeline > li", events).await;
    // Every event went to analytics, and each shows it delivered.
    wait_count(
        c,
        "#timeline li[data-webhook=analytics] .badge.delivered",
        events,
    )
    .await;
    let submitted = wait_text(c, "#timeline li[data-event=import_submitted]", "crm").await;
    assert!(submitted.contains("dead"), "{submitted}");
    let summary = wait_text(c, "#session-summary", "contacts").await;
    assert!(summary.contains("closed"), "{summary}");
    screenshot(c, "session-timeline").await;

    // The dead letter: its page shows the failed attempt; Retry sends it
    // again and the page follows it to delivered without a reload.
    open(c, "#/deliveries?state=dead&webhook=crm").await;
    click(c, &format!("#deliveries a[href='#/deliveries/{dead}']")).await;
    wait_text(c, "#delivery-state", "dead").await;
    let attempts = wait_text(c, "#delivery table", "500").await;
    assert!(attempts.contains("ms"), "{attempts}");
    wait_text(c, "#payload pre", "import_submitted").await;
    c.execute("window.__page = 'same page'", vec![])
        .await
        .unwrap();
    click(c, "#retry").await;
    wait_text(c, "#delivery-state", "delivered").await;
    wait_count(c, "#delivery tbody tr", 2).await;
    assert_eq!(
        c.execute("return window.__page", vec![]).await.unwrap(),
        json!("same page"),
        "live update, no reload"
    );
    assert_eq!(stack.receiver.received_on("/hooks/crm").len(), 2);
    screenshot(c, "delivery").await;

    // The webhook a 410 disabled: Enable from the console, and its
    // waiting delivery goes out.
    click(c, "nav a[data-section=webhooks]").await;
    wait_text(c, "tr[data-webhook=audit] td.state", "disabled").await;
    let row = wait_text(c, "tr[data-webhook=analytics]", "100%").await;
    assert!(row.contains("active"), "{row}");
    wait_text(
        c,
        "tr[data-webhook=analytics] td.controls",
        "≤ 1000/s, burst 100",
    )
    .await;
    wait_text(
        c,
        "tr[data-webhook=crm] td.controls",
        "in order per session",
    )
    .await;
    screenshot(c, "webhooks").await;
    click(c, "tr[data-webhook=audit] button.enable").await;
    wait_text(c, "tr[data-webhook=audit] td.state", "active").await;
    wait_text(c, "#webhook-status", "audit enabled").await;
    let (_, view) = api(&stack, "GET", "/v1/event-webhooks/audit", None).await;
    assert_eq!(view["disabled"], Value::Null);
    stack.receiver.wait_for("/hooks/audit", 3, WAIT).await;

    // A new webhook through the form: the 422's problem shows at its
    // field; fixed, it is created and listed.
    open(c, "#/webhooks/new").await;
    fill(c, "#field-webhook_key", "alerts").await;
    fill(c, "#field-url", &stack.receiver.url("/hooks/alerts")).await;
    fill(c, "#field-events", "no_such_event").await;
    click(c, "#webhook-form button[type=submit]").await;
    wait_text(c, "#error-events", "unknown event type `no_such_event`").await;
    let url_error = c
        .find(Locator::Css("#error-url"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(url_error, "", "the problem is at its field only");
    fill(c, "#field-events", "import_submitted, embed_closed").await;
    fill(c, "#field-description", "Alerts when an import is done").await;
    click(c, "#webhook-form button[type=submit]").await;
    wait_text(
        c,
        "tr[data-webhook=alerts]",
        "embed_closed, import_submitted",
    )
    .await;
    // And edited.
    click(
        c,
        "tr[data-webhook=alerts] a[href='#/webhooks/alerts/edit']",
    )
    .await;
    fill(c, "#field-description", "Import alerts").await;
    click(c, "#webhook-form button[type=submit]").await;
    wait_text(c, "tr[data-webhook=alerts]", "Import alerts").await;
    let (_, view) = api(&stack, "GET", "/v1/event-webhooks/alerts", None).await;
    assert_eq!(view["description"], "Import alerts");
    assert_eq!(view["events"], json!(["embed_closed", "import_submitted"]));

    // Up to here the page's console holds only the answers this test
    // asked for (the wrong token's 401, the form's 422).
    let errors = console_errors(c).await;
    assert!(
        errors.iter().all(|e| e.contains("Failed to load resource")),
        "{errors:?}"
    );

    // The hostile session: every value shows as text, and nothing ran.
    open(c, &format!("#/sessions?q={}", urlencode("onerror"))).await;
    let row = wait_text(c, "#sessions tbody tr", HOSTILE_TEMPLATE).await;
    assert!(row.contains(&hostile.to_string()), "{row}");
    open(c, &format!("#/sessions/{hostile}")).await;
    wait_text(c, "#session-summary", HOSTILE_TEMPLATE).await;
    wait_count(c, "#timeline > li", 2).await;
    c.execute(
        "document.querySelectorAll('#timeline details').forEach((d) => d.open = true)",
        vec![],
    )
    .await
    .unwrap();
    wait_text(
        c,
        "#timeline li[data-event=file_uploaded] pre",
        HOSTILE_FILE,
    )
    .await;
    let shown: Value = c
        .execute(
            "return {
               injected: document.querySelectorAll('main img, main script, main iframe').length,
               ran: window.__ran,
               template: document.querySelector('#session-summary dd').textContent,
             }",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shown["injected"], 0, "{shown}");
    assert_eq!(shown["ran"], json!([]), "{shown}");
    // Shown as typed: no markup parsed, no `{{ }}` evaluated.
    assert_eq!(shown["template"], HOSTILE_TEMPLATE, "{shown}");
    screenshot(c, "hostile-session").await;
    let errors = console_errors(c).await;
    assert!(
        errors.is_empty(),
        "the page's console has errors: {errors:?}"
    );
    assert!(c.get_alert_text().await.is_err(), "no alert is open");

    // A session key is chosen by end users: whatever it is (a dot segment,
    // `/`, `?`, `#`, `%`, spaces, non-ASCII, 1 KiB), its page shows that
    // session and nothing else (issue 24: `.` and `..` opened `/v1/`).
    let long = "k".repeat(1024);
    for (i, key) in [".", "..", "a/../b?c=d#e", "50% off é", long.as_str()]
        .iter()
        .enumerate()
    {
        let template = format!("odd-key-{i}");
        let event =
            json!({"event_type": "file_uploaded", "embed_id": key, "template_key": template});
        assert_eq!(api(&stack, "POST", "/v1/events", Some(event)).await.0, 202);
        api_until(
            &stack,
            &format!("/v1/session?key={}", urlencode(key)),
            |b| b["session"]["embed_id"] == *key,
        )
        .await;
        open(c, &format!("#/sessions/{}", urlencode(key))).await;
        wait_text(c, "#session-summary dd", &template).await;
        wait_count(c, "#timeline li[data-event=file_uploaded]", 1).await;
    }

    // Ends the browser session: chromedriver closes Chromium.
    c.clone().close().await.unwrap();
}

/// Issue 24: "what happened to this user's import, who retried it, and is
/// this receiver healthy", answered from the console alone, each with a
/// token that can do no more than it needs: a read-only token sees a 410'd
/// delivery held (why, every attempt counted, no next attempt) and no
/// control it cannot use; an operate token retries from the timeline,
/// retries a filter's dead letters after seeing the count, sends a test
/// event, searches, and reads the audit trail that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_answers_what_happened_who_retried_and_is_the_receiver_healthy() {
    const OPS: &str = "ops-t0ken-9f8e7d6c";
    const READER: &str = "reader-t0ken-1a2b3c4d";
    let hooks = [
        webhook("gone", "/hooks/gone", "    events: [embed_initialized]\n"),
        webhook(
            "crm",
            "/hooks/crm",
            "    events: [import_submitted]\n    retry: { max_retries: 0 }\n",
        ),
    ];
    let stack = Stack::start(Setup {
        rules: vec![("hooks.yaml", format!("webhooks:\n{}", hooks.concat()))],
        config: &format!(
            "admin_token: {TOKEN}\nadmin_tokens:\n  - {{name: olga-ops, token: {OPS}, role: operate}}\n  - {{name: rita-read, token: {READER}, role: read}}\n"
        ),
        ..Default::default()
    })
    .await;
    stack.receiver.script("/hooks/gone", &[Reply::Status(410)]);
    stack
        .receiver
        .default_reply("/hooks/crm", Reply::Status(500));
    let id = stack
        .create_embed(json!({"template_key": "contacts"}), false)
        .await;
    stack.finish_session(id).await;
    let held = api_until(&stack, "/v1/deliveries?state=held", |b| {
        b["deliveries"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await["deliveries"][0]["id"]
        .as_i64()
        .unwrap();
    let dead = api_until(&stack, "/v1/deliveries?state=dead&webhook=crm", |b| {
        b["deliveries"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await["deliveries"][0]["id"]
        .as_i64()
        .unwrap();

    let browser = browser().await;
    let c = &browser.client;
    c.goto(&format!("http://{}/console/", stack.admin))
        .await
        .unwrap();

    // A read-only token: who is signed in, the held delivery as it is,
    // and no control it could not use.
    fill(c, "#token", READER).await;
    click(c, "#signin button[type=submit]").await;
    wait_text(c, "#who", "signed in as rita-read (read)").await;
    open(c, &format!("#/deliveries/{held}")).await;
    wait_text(c, "#delivery-state", "held").await;
    wait_text(c, "#held-reason", "410 Gone").await;
    let attempts = wait_text(c, "#delivery-attempts", "1").await;
    assert!(attempts.starts_with("1 (0 counted"), "{attempts}");
    wait_text(c, "#delivery-next", "none while the webhook is disabled").await;
    wait_text(c, "#delivery table", "410").await;
    let created = wait_text(c, "#delivery .kv", "UTC").await;
    assert!(
        created.contains(" ago)"),
        "times show their zone and how long ago: {created}"
    );
    wait_count(c, "#retry", 0).await;
    screenshot(c, "delivery-held").await;
    open(c, "#/deliveries?state=failed").await;
    wait_count(c, &format!("#deliveries tr[data-id='{held}']"), 1).await;
    wait_text(c, &format!("#deliveries tr[data-id='{held}']"), "held").await;
    wait_count(c, "#retry-these", 0).await;
    wait_count(c, "#replay", 0).await;
    open(c, &format!("#/sessions/{id}")).await;
    wait_text(c, "#timeline li[data-webhook=gone]", "held").await;
    wait_text(c, "#timeline li[data-webhook=crm]", "dead").await;
    wait_count(c, "#timeline button.retry", 0).await;
    open(c, "#/webhooks").await;
    wait_text(c, "tr[data-webhook=gone] td.state", "disabled").await;
    wait_count(c, "button.enable", 0).await;
    wait_count(c, "main a[href='#/webhooks/new']", 0).await;
    click(c, "#sign-out").await;

    // An operate token: retry on the timeline's chip.
    fill(c, "#token", OPS).await;
    click(c, "#signin button[type=submit]").await;
    wait_text(c, "#who", "signed in as olga-ops (operate)").await;
    stack
        .receiver
        .default_reply("/hooks/crm", Reply::Status(200));
    open(c, &format!("#/sessions/{id}")).await;
    click(c, &format!("#timeline li[data-id='{dead}'] button.retry")).await;
    wait_text(c, "#timeline-status", &format!("Delivery {dead} queued")).await;
    wait_text(c, &format!("#timeline li[data-id='{dead}']"), "delivered").await;
    assert_eq!(stack.receiver.received_on("/hooks/crm").len(), 2);
    screenshot(c, "timeline-retry").await;

    // Retry these: three dead letters of a filter, counted, then sent.
    stack
        .receiver
        .default_reply("/hooks/crm", Reply::Status(500));
    for i in 0..3 {
        let event = json!({"event_type": "import_submitted", "embed_id": format!("bulk-{i}")});
        assert_eq!(api(&stack, "POST", "/v1/events", Some(event)).await.0, 202);
    }
    api_until(&stack, "/v1/deliveries?state=dead&webhook=crm", |b| {
        b["deliveries"].as_array().is_some_and(|d| d.len() == 3)
    })
    .await;
    stack
        .receiver
        .default_reply("/hooks/crm", Reply::Status(200));
    open(c, "#/deliveries?state=dead&webhook=crm").await;
    wait_count(c, "#deliveries tbody tr", 3).await;
    click(c, "#retry-these").await;
    wait_text(c, "#bulk-status", "3 dead deliveries match this filter").await;
    assert_eq!(
        stack.receiver.received_on("/hooks/crm").len(),
        5,
        "counting sends nothing"
    );
    click(c, "#retry-these-confirm").await;
    wait_text(c, "#bulk-status", "3 deliveries sent again").await;
    stack.receiver.wait_for("/hooks/crm", 8, WAIT).await;

    // Is the receiver healthy: its page, and a test event through it.
    open(c, "#/webhooks").await;
    click(c, "tr[data-webhook=crm] a[href='#/webhooks/crm']").await;
    wait_text(c, "#webhook-history", "attempts in 7 days").await;
    wait_text(c, "#webhook-history table", "5xx: 4").await;
    wait_count(c, "#history-chart rect.failed", 1).await;
    // The webhook's payload schemas, from the catalog (issue 27).
    wait_text(c, "#webhook-schemas", "import_submitted").await;
    click(
        c,
        "#webhook-schemas tr[data-schema=import_submitted] button.show-schema",
    )
    .await;
    let schema = wait_text(c, "#schema-shown", "\"const\": \"import_submitted\"").await;
    assert!(
        schema.contains("https://json-schema.org/draft/2020-12/schema"),
        "{schema}"
    );
    screenshot(c, "webhook-schemas").await;
    click(c, "#test-event button[type=submit]").await;
    wait_text(c, "#test-status", "Taphook-Test: 1").await;
    let got = stack.receiver.wait_for("/hooks/crm", 9, WAIT).await;
    assert_eq!(got[8].header("taphook-test"), Some("1"));
    assert_eq!(got[8].json()["event_type"], "import_submitted");
    screenshot(c, "webhook-health").await;
    click(c, "#test-status a").await;
    wait_text(c, "#delivery-state", "delivered").await;
    wait_text(c, "#delivery-state", "test").await;
    // Every attempt in full: what was sent, what came back.
    c.execute(
        "document.querySelectorAll('#delivery details.exchange').forEach((d) => d.open = true)",
        vec![],
    )
    .await
    .unwrap();
    let exchange = wait_text(c, "#delivery details.exchange", "taphook-test").await;
    assert!(
        exchange.contains("POST http://") && exchange.contains("HTTP 200"),
        "{exchange}"
    );
    screenshot(c, "delivery-attempts").await;

    // Find anything from the box on every page: a delivery id, a field.
    fill(c, "#search", &dead.to_string()).await;
    c.execute(
        "document.getElementById('search-form').requestSubmit()",
        vec![],
    )
    .await
    .unwrap();
    wait_text(c, "#found-deliveries", "crm").await;
    fill(c, "#search", "filename=contacts.csv").await;
    c.execute(
        "document.getElementById('search-form').requestSubmit()",
        vec![],
    )
    .await
    .unwrap();
    wait_text(c, "#found-events", "file_uploaded").await;
    wait_text(c, "#found-sessions", &id.to_string()).await;
    screenshot(c, "search").await;

    // Who retried it: the audit trail names the token for each change.
    click(c, "nav a[data-section=audit]").await;
    let newest = wait_text(c, "#audit tbody tr", "olga-ops").await;
    assert!(newest.contains("/v1/event-webhooks/crm/test"), "{newest}");
    let all = wait_text(c, "#audit tbody", &format!("/v1/deliveries/{dead}/retry")).await;
    assert!(all.contains("POST /v1/deliveries/retry"), "{all}");
    assert!(!all.contains(OPS) && !all.contains(READER), "a token shown");
    screenshot(c, "audit").await;

    let errors = console_errors(c).await;
    assert!(
        errors.is_empty(),
        "the page's console has errors: {errors:?}"
    );
    c.clone().close().await.unwrap();
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
