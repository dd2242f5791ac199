//! `taphook demo`: the reference importer, taphook in front of it and a
//! webhook receiver, all on free loopback ports in one process; a
//! scripted import session goes through the proxy and every webhook is
//! printed as it arrives, then a metrics summary.

pub mod importer;
pub mod receiver;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::app::{self, Stop};
use crate::config::Config;
use crate::rules::{self, source::Document};
use importer::ReferenceImporter;
use receiver::Receiver;

/// The shipped OneSchema profile, built in so the demo needs no files.
pub const ONESCHEMA_PROFILE: &str = include_str!("../../rules/oneschema.yaml");

/// The shipped profiles, by file name.
pub const PROFILES: [(&str, &str); 3] = [
    ("oneschema.yaml", ONESCHEMA_PROFILE),
    ("dromo.yaml", include_str!("../../rules/dromo.yaml")),
    ("flatfile.yaml", include_str!("../../rules/flatfile.yaml")),
];

/// The 8 OneSchema event types, in the order the demo produces them.
pub const EVENT_TYPES: [&str; 8] = [
    "embed_initialized",
    "file_uploaded",
    "header_selected",
    "columns_mapped",
    "sheet_operation_performed",
    "import_submitted",
    "embed_closed",
    "embed_resumed",
];

pub fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(demo())
}

/// A free loopback port (bound, read, released), for a process started
/// next to bind. It is drawn below the kernel's ephemeral range, so an
/// outgoing connection or another `bind(0)` cannot take it once released
/// (before the process binds it, or between a stop and a restart).
pub fn free_port() -> std::io::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 11_000 {
        for _ in 0..200 {
            let port = fastrand::u16(10_000..ephemeral_low);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A made-up embed JWT whose claims carry analytics metadata.
pub fn demo_jwt() -> String {
    let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        part(json!({"alg": "HS256", "typ": "JWT"})),
        part(json!({"user_id": "demo-user", "org": "acme"})),
        "c2lnbmF0dXJl"
    )
}

/// A multipart body with one `file` part; returns (content type, body).
pub fn multipart_file(filename: &str, content: &str) -> (String, Vec<u8>) {
    let boundary = "taphook-demo-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: text/csv\r\n\r\n{content}\r\n--{boundary}--\r\n"
    );
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

/// What the demo expects at the receiver: path and number of requests.
const EXPECTED: [(&str, usize); 4] = [
    ("/hooks/oneschema", EVENT_TYPES.len()),
    ("/hooks/dromo", 1),
    ("/hooks/dromo-basic", 1),
    ("/hooks/flatfile", 2),
];

/// The demo's signing secret (Standard Webhooks' example secret).
const DEMO_SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn demo() -> anyhow::Result<()> {
    let importer = ReferenceImporter::start()
        .await
        .context("starting the reference importer")?;
    let receiver = Receiver::start()
        .await
        .context("starting the webhook receiver")?;
    let dir = std::env::temp_dir().join(format!("taphook-demo-{}", std::process::id()));
    let (config, rules) = demo_setup(&dir, &importer, &receiver)?;
    let proxy = config.listen;
    let admin = config.admin_listen;
    println!("reference importer  {}", importer.url());
    println!("taphook proxy       http://{proxy}");
    println!("taphook admin       http://{admin}/metrics");
    println!("webhook receiver    {}  (/hooks/oneschema, /hooks/dromo, /hooks/dromo-basic, /hooks/flatfile)\n", receiver.url(""));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let server = std::thread::spawn(move || {
        app::run(config, rules, Stop::Channel(stop_rx), app::Launch::Fresh)
    });
    wait_ready(admin, proxy).await?;

    let mut arrivals = receiver.subscribe();
    let printer = tokio::spawn(async move {
        let mut n = 0;
        while let Ok(r) = arrivals.recv().await {
            n += 1;
            println!(
                "  ⇢ webhook #{n} {} {} ({})\n    {}",
                r.method,
                r.path,
                describe_headers(&r),
                shorten(&r.body)
            );
        }
    });
    let result = async {
        println!("OneSchema: an embed session, step by step");
        oneschema_session(proxy).await?;
        println!("\nDromo: a headless import, polled until done");
        dromo_headless_import(proxy).await?;
        println!("\nFlatfile: a batch of 1,500 rows");
        flatfile_batch(proxy).await
    }
    .await;
    for (path, n) in EXPECTED {
        receiver.wait_for(path, n, Duration::from_secs(15)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    printer.abort();
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await?
        .text()
        .await?;
    println!("\nmetrics summary:");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("taphook_") && !l.contains("_bucket") && !l.ends_with(" 0"))
    {
        println!("  {line}");
    }
    let _ = stop_tx.send(());
    let _ = tokio::task::spawn_blocking(move || server.join()).await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    check_arrivals(&receiver)?;
    println!("\nall {} OneSchema event types, a Dromo managed and a basic webhook, and a 2-part Flatfile batch arrived", EVENT_TYPES.len());
    Ok(())
}

fn describe_headers(r: &receiver::Recorded) -> String {
    let mut parts = vec![r
        .header("content-type")
        .unwrap_or("no content type")
        .to_string()];
    if r.header("authorization").is_some() {
        parts.push("Basic auth".into());
    }
    if r.header("webhook-signature").is_some() {
        parts.push("Standard Webhooks signature".into());
    }
    parts.join(", ")
}

/// A body for printing: at most 400 characters.
fn shorten(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(400) {
        Some((i, _)) => format!("{}… ({} bytes)", &text[..i], body.len()),
        None => text.into_owned(),
    }
}

fn check_arrivals(receiver: &Receiver) -> anyhow::Result<()> {
    let types: Vec<String> = receiver
        .received_on("/hooks/oneschema")
        .iter()
        .map(|r| r.json()["event_type"].as_str().unwrap_or("").to_string())
        .collect();
    let missing: Vec<_> = EVENT_TYPES
        .iter()
        .filter(|t| !types.iter().any(|g| g == *t))
        .collect();
    if !missing.is_empty() {
        bail!("the receiver did not get {missing:?}");
    }
    for (path, n) in EXPECTED {
        let got = receiver.received_on(path).len();
        if got < n {
            bail!("{path} got {got} request(s), expected {n}");
        }
    }
    Ok(())
}

/// Writes the demo's rules and builds its config.
fn demo_setup(
    dir: &Path,
    importer: &ReferenceImporter,
    receiver: &Receiver,
) -> anyhow::Result<(Config, rules::Rules)> {
    let rules_dir = dir.join("rules");
    std::fs::create_dir_all(&rules_dir)?;
    for (name, text) in PROFILES {
        std::fs::write(rules_dir.join(name), text)?;
    }
    let r = receiver.url("");
    let hooks = format!(
        r#"webhooks:
  - key: event_webhook
    url: {r}/hooks/oneschema
    events: ["*"]
    assignment: session
    secret: demo-secret
  - key: dromo_managed
    url: {r}/hooks/dromo
    format: dromo
    events: [import_completed, headless_import_needs_review, headless_import_failed]
    signing: {{ scheme: standard-webhooks, secrets: [{DEMO_SIGNING_SECRET}] }}
  - key: dromo_basic
    url: {r}/hooks/dromo-basic
    format: dromo-basic
    events: [import_completed]
  - key: flatfile
    url: {r}/hooks/flatfile
    format: flatfile
    events: [batch.update]
"#
    );
    std::fs::write(rules_dir.join("webhooks.yaml"), hooks)?;
    let text = format!(
        // The receiver is on loopback, which the SSRF guard refuses by default.
        "listen: 127.0.0.1:{}\nupstream: {}\nadmin_listen: 127.0.0.1:{}\nrules_dir: {}\ndata_dir: {}\nthreads: 2\ndelivery:\n  allow_private_networks: [127.0.0.0/8]\n",
        free_port()?,
        importer.url(),
        free_port()?,
        rules_dir.display(),
        dir.join("data").display()
    );
    let path: PathBuf = dir.join("taphook.yaml");
    let doc = Document::parse(&path, &text, &|_| None).map_err(|p| anyhow::anyhow!("{p}"))?;
    let config = Config::from_document(&doc, dir).map_err(|p| anyhow::anyhow!("{p}"))?;
    let rules = rules::load_dir(&rules_dir, &|_| None).map_err(|p| anyhow::anyhow!("{p}"))?;
    Ok((config, rules))
}

/// Waits for `/readyz` and for the proxy port to accept connections.
pub async fn wait_ready(admin: SocketAddr, proxy: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = reqwest::Client::builder().no_proxy().build()?;
    loop {
        let ready = client
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready && tokio::net::TcpStream::connect(proxy).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("taphook did not become ready on {proxy} / {admin}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().build()?)
}

fn step(method: &str, path: &str, status: reqwest::StatusCode) {
    println!("→ {method} {path} {}", status.as_u16());
}

/// A user imports contacts.csv through the proxy.
async fn oneschema_session(proxy: SocketAddr) -> anyhow::Result<()> {
    let client = client()?;
    let base = format!("http://{proxy}");
    let created: Value = {
        let r = client
            .post(format!("{base}/v1/embeds"))
            .header("x-api-key", "demo-api-key")
            .json(&json!({"template_key": "contacts", "embed_user_jwt": demo_jwt(), "event_webhook_keys": ["event_webhook"], "dev_mode": false}))
            .send()
            .await?;
        step("POST", "/v1/embeds", r.status());
        r.json().await?
    };
    let id = created["id"]
        .as_u64()
        .context("the importer returned no embed id")?;
    let (ct, body) = multipart_file(
        "contacts.csv",
        "name,email\nAda,ada@example.com\nBob,bob-at-example\nEve,eve@example.com",
    );
    let calls: Vec<(reqwest::Method, String, Option<Body>)> = vec![
        (
            reqwest::Method::POST,
            format!("/v1/embeds/{id}/upload"),
            Some((ct, body)),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/embeds/{id}/set-header"),
            Some(json_body(json!({"index": 0}))),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/embeds/{id}/map"),
            Some(json_body(
                json!({"mapping": {"name": "name", "email": "email"}}),
            )),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/embeds/{id}/sheet-operations"),
            Some(json_body(json!({"operation": "delete_invalid_rows"}))),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/embeds/{id}/import"),
            Some(json_body(json!({}))),
        ),
        (reqwest::Method::DELETE, format!("/v1/embeds/{id}"), None),
        (
            reqwest::Method::POST,
            format!("/v1/embeds/{id}/resume"),
            Some(json_body(json!({}))),
        ),
    ];
    for (method, path, body) in calls {
        let mut req = client.request(method.clone(), format!("{base}{path}"));
        if let Some((ct, bytes)) = body {
            req = req.header("content-type", ct).body(bytes);
        }
        let r = req.send().await?;
        step(method.as_str(), &path, r.status());
        // Give each step's webhook a moment so the output reads in order.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    Ok(())
}

/// A Dromo headless import: create, upload, poll until it is done.
async fn dromo_headless_import(proxy: SocketAddr) -> anyhow::Result<()> {
    let client = client()?;
    let base = format!("http://{proxy}/api/v1/headless/imports");
    let r = client
        .post(format!("{base}/"))
        .json(&json!({"schema_id": "contacts-schema", "original_filename": "contacts.csv", "import_identifier": "contacts-v2",
            "development_mode": false, "user": {"id": "user-123", "name": "Caitlin Clark", "email": "cclark@example.com"}}))
        .send()
        .await?;
    step("POST", "/api/v1/headless/imports/", r.status());
    let created: Value = r.json().await?;
    let id = created["id"]
        .as_str()
        .context("the importer returned no import id")?
        .to_string();
    let r = client
        .put(format!("{base}/{id}/upload"))
        .body("name,email\nAda,ada@example.com\nEve,eve@example.com\n")
        .send()
        .await?;
    step(
        "PUT",
        &format!("/api/v1/headless/imports/{id}/upload"),
        r.status(),
    );
    for _ in 0..3 {
        let r = client.get(format!("{base}/{id}/")).send().await?;
        let status = r.status();
        let body: Value = r.json().await?;
        println!(
            "→ GET /api/v1/headless/imports/{id}/ {} ({})",
            status.as_u16(),
            body["status"].as_str().unwrap_or("?")
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    Ok(())
}

/// A Flatfile-style batch of 1,500 rows (1,400 valid, 100 invalid).
async fn flatfile_batch(proxy: SocketAddr) -> anyhow::Result<()> {
    let row =
        |i: usize| json!({"name": format!("person {i}"), "email": format!("p{i}@example.com")});
    let body = json!({
        "schema_id": 42,
        "valid_rows": (0..1400).map(row).collect::<Vec<_>>(),
        "invalid_rows": (1400..1500).map(|i| json!({"name": format!("person {i}"), "email": "not-an-email"})).collect::<Vec<_>>(),
    });
    let r = client()?
        .post(format!("http://{proxy}/v1/batches/batch-7/submit"))
        .json(&body)
        .send()
        .await?;
    step("POST", "/v1/batches/batch-7/submit", r.status());
    Ok(())
}

/// A request body and its content type.
type Body = (String, Vec<u8>);

fn json_body(v: Value) -> Body {
    ("application/json".to_string(), v.to_string().into_bytes())
}
