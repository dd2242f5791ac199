//! The test stack: the reference importer and a recording receiver in
//! this process, and the real `taphook` binary as a child process, all
//! on free loopback ports.

#![allow(dead_code)]

pub mod brokers;
pub mod nats;
pub mod ordered;
pub mod pki;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{json, Value};
use taphook::demo::importer::ReferenceImporter;
use taphook::demo::receiver::Receiver;
use taphook::demo::{free_port, multipart_file, wait_ready, PROFILES};

#[allow(unused_imports)]
pub use taphook::demo::receiver::Reply;

pub struct Stack {
    pub importer: Option<ReferenceImporter>,
    pub receiver: Receiver,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    child: Child,
    log_filter: String,
    env: Vec<(String, String)>,
}

/// What a test changes in the stack.
#[derive(Default)]
pub struct Setup<'a> {
    /// Rules files (name, text) beside the OneSchema profile; `{receiver}`
    /// is replaced by the receiver's base URL, `{receiver_addr}` by its
    /// `127.0.0.1:port` and `{receiver_port}` by its port.
    pub rules: Vec<(&'a str, String)>,
    /// Extra config lines.
    pub config: &'a str,
    /// Point the proxy at a port nothing listens on.
    pub upstream_down: bool,
    /// Point the proxy at this upstream URL instead of the reference
    /// importer (another taphook over TLS, say).
    pub upstream: Option<&'a str>,
    /// `RUST_LOG` for taphook (default `info,taphook=debug`).
    pub log_filter: Option<&'a str>,
    /// `delivery.allow_private_networks`, a YAML list. `None`: loopback
    /// (the receiver's, which the SSRF guard refuses by default);
    /// `Some("[]")`: taphook's default.
    pub allow_private_networks: Option<&'a str>,
    /// Environment variables for taphook (rules and config read `${VAR}`).
    pub env: Vec<(&'a str, String)>,
}

/// Routes of a session keyed by a hashed cookie (`sessionid`) and joined
/// by the task id its upload handed out: the upload is `POST
/// /_fixtures/echo` (answered with the JSON it was sent, so the test
/// chooses the task id), the poll `GET /_fixtures/empty?task=...`, which
/// carries only the task id.
pub const ALIAS_ROUTES: &str = r#"routes:
  - name: upload
    event: file_uploaded
    method: POST
    path: /_fixtures/echo
    session: {"hash": "$request.cookies.sessionid"}
    session_alias: $response.body.task_id
    remember:
      filename: $response.body.filename
  - name: poll-done
    event: import_succeeded
    method: GET
    path: /_fixtures/empty
    status: 204
    session: $query.task
    dedup_key: ["$query.task"]
    data:
      filename: $session.filename
"#;

/// What the stack allows by default: the receiver listens on loopback.
pub const ALLOW_LOOPBACK: &str = "[127.0.0.0/8, \"::1/128\"]";

/// `RUST_LOG` for taphook unless a test sets its own.
const LOG_FILTER: &str = "info,taphook=debug";

impl Stack {
    /// `GET /_fixtures/empty?i={i}` through taphook (204): with a `ping`
    /// route on that path, one event per `i`.
    pub async fn ping(&self, i: usize) {
        let r = self
            .client
            .get(self.url(&format!("/_fixtures/empty?i={i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    /// A stack with these rules files and everything else by default.
    pub async fn with_rules(rules: Vec<(&str, String)>) -> Stack {
        Stack::start(Setup {
            rules,
            ..Default::default()
        })
        .await
    }

    pub async fn start(setup: Setup<'_>) -> Stack {
        let receiver = Receiver::start().await.expect("receiver");
        let (importer, upstream) = if let Some(url) = setup.upstream {
            (None, url.to_string())
        } else if setup.upstream_down {
            (None, format!("http://127.0.0.1:{}", free_port().unwrap()))
        } else {
            let imp = ReferenceImporter::start().await.expect("importer");
            let url = imp.url();
            (Some(imp), url)
        };
        let dir = tempfile::tempdir().unwrap();
        let rules_dir = dir.path().join("rules");
        std::fs::create_dir_all(&rules_dir).unwrap();
        for (name, text) in PROFILES {
            std::fs::write(rules_dir.join(name), text).unwrap();
        }
        let base = format!("http://{}", receiver.addr);
        for (name, text) in &setup.rules {
            let text = text
                .replace("{receiver}", &base)
                .replace("{receiver_addr}", &receiver.addr.to_string())
                .replace("{receiver_port}", &receiver.addr.port().to_string());
            std::fs::write(rules_dir.join(name), text).unwrap();
        }
        let log_filter = setup.log_filter.unwrap_or(LOG_FILTER).to_string();
        let env: Vec<(String, String)> = setup
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        // A free port is released before taphook binds it, so a parallel
        // test can take it first: then taphook exits, and we try again.
        for _attempt in 0..3 {
            let (proxy_port, admin_port) = (free_port().unwrap(), free_port().unwrap());
            let config = format!(
                "listen: 127.0.0.1:{proxy_port}\nupstream: {upstream}\nadmin_listen: 127.0.0.1:{admin_port}\nrules_dir: rules\ndata_dir: data\nthreads: 2\n{}",
                with_allow_list(
                    setup.config,
                    setup.allow_private_networks.unwrap_or(ALLOW_LOOPBACK)
                )
            );
            std::fs::write(dir.path().join("taphook.yaml"), config).unwrap();
            let proxy: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
            match launch(dir.path(), admin, proxy, &log_filter, &env).await {
                Ok(child) => {
                    return Stack {
                        importer,
                        receiver,
                        proxy,
                        admin,
                        dir,
                        client: client(),
                        child,
                        log_filter,
                        env,
                    }
                }
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("taphook did not start:\n{log}"),
            }
        }
        panic!("taphook could not get free ports in 3 attempts");
    }

    /// Stops taphook (SIGKILL) and starts it again on the same config,
    /// rules directory, data directory and ports.
    pub async fn restart(&mut self) {
        self.kill9();
        self.relaunch().await;
    }

    /// SIGKILL: the process dies at once, mid-whatever.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts taphook again after it stopped.
    pub async fn relaunch(&mut self) {
        match launch(
            self.dir.path(),
            self.admin,
            self.proxy,
            &self.log_filter,
            &self.env,
        )
        .await
        {
            Ok(child) => self.child = child,
            Err(log) => panic!("taphook did not restart:\n{log}"),
        }
    }

    /// SIGTERM, then waits for the process to exit (at most `limit`);
    /// returns how long it took and whether it exited successfully.
    pub async fn sigterm(&mut self, limit: Duration) -> (Duration, bool) {
        let started = std::time::Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (started.elapsed(), status.success());
            }
            if started.elapsed() > limit {
                self.kill9();
                panic!(
                    "taphook did not exit within {limit:?} of SIGTERM\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn direct_url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.importer.as_ref().expect("importer").url(),
            path
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("taphook.log")).unwrap_or_default()
    }

    pub fn rules_dir(&self) -> PathBuf {
        self.dir.path().join("rules")
    }

    /// The status of an unauthenticated admin GET (`/healthz`, `/readyz`).
    pub async fn admin_status(&self, path: &str) -> u16 {
        let url = format!("http://{}{path}", self.admin);
        self.client.get(url).send().await.unwrap().status().as_u16()
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample (`name{labels}` exactly as exported), 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    /// Polls `sample` until it equals `expected` (metrics are updated just
    /// after a receiver answers, so a read can be early), for up to 10 s;
    /// returns the last value seen.
    pub async fn wait_metric(&self, sample: &str, expected: f64) -> f64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(sample).await;
            if v == expected || std::time::Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `sample` is at least `at_least` (30 s at most, then
    /// panics with taphook's log); its value.
    pub async fn wait_metric_at_least(&self, sample: &str, at_least: f64) -> f64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.metric(sample).await;
            if v >= at_least {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{sample} is {v}, not yet {at_least}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An admin API call with a bearer token; the status and the JSON body
    /// (`Null` when it is not JSON).
    pub async fn api(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(
                method.parse().unwrap(),
                format!("http://{}{}", self.admin, path),
            )
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The taphook process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the taphook process ended, once it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Is the taphook process still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Creates an embed through the proxy; returns its id.
    pub async fn create_embed(&self, body: Value, api_key: bool) -> u64 {
        let mut req = self.client.post(self.url("/v1/embeds")).json(&body);
        if api_key {
            req = req.header("x-api-key", "test-key");
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()["id"].as_u64().unwrap()
    }

    /// Runs the other seven steps of a session through the proxy.
    pub async fn finish_session(&self, id: u64) {
        let (ct, body) = multipart_file(
            "contacts.csv",
            "name,email\nAda,ada@example.com\nBob,bob-at-example\n",
        );
        self.post(&format!("/v1/embeds/{id}/upload"), &ct, body)
            .await;
        self.post_json(&format!("/v1/embeds/{id}/set-header"), json!({"index": 0}))
            .await;
        self.post_json(&format!("/v1/embeds/{id}/map"), json!({}))
            .await;
        self.post_json(
            &format!("/v1/embeds/{id}/sheet-operations"),
            json!({"operation": "delete_rows"}),
        )
        .await;
        self.post_json(&format!("/v1/embeds/{id}/import"), json!({}))
            .await;
        let r = self
            .client
            .delete(self.url(&format!("/v1/embeds/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        self.post_json(&format!("/v1/embeds/{id}/resume"), json!({}))
            .await;
    }

    pub async fn post_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.post(path, "application/json", body.to_string().into_bytes())
            .await
    }

    pub async fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits `d` so late deliveries would have arrived.
pub async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
}

/// `config` with `delivery.allow_private_networks: list`, in the
/// `delivery:` block when `config` has one.
pub fn with_allow_list(config: &str, list: &str) -> String {
    let line = format!("  allow_private_networks: {list}\n");
    let mut out = String::new();
    let mut placed = false;
    for l in config.lines() {
        out.push_str(l);
        out.push('\n');
        if l == "delivery:" {
            out.push_str(&line);
            placed = true;
        }
    }
    if !placed {
        out.push_str("delivery:\n");
        out.push_str(&line);
    }
    out
}

/// A webhook YAML entry.
pub fn webhook(key: &str, path: &str, extra: &str) -> String {
    format!("  - key: {key}\n    url: {{receiver}}{path}\n{extra}")
}

pub fn path_of(p: &Path) -> String {
    p.display().to_string()
}

/// Resolves when the child process has exited.
async fn exited(child: &mut Child) {
    while matches!(child.try_wait(), Ok(None)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `taphook run` on `dir/taphook.yaml`, its stdout and stderr
/// going to `dir/taphook.log`, and waits until it is ready; on failure,
/// returns the log.
pub async fn launch(
    dir: &Path,
    admin: SocketAddr,
    proxy: SocketAddr,
    log_filter: &str,
    env: &[(String, String)],
) -> Result<Child, String> {
    let log_path = dir.join("taphook.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["run", "--config"])
        .arg(dir.join("taphook.yaml"))
        .env("RUST_LOG", log_filter)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn taphook");
    let ready = tokio::select! {
        r = wait_ready(admin, proxy) => r,
        _ = exited(&mut child) => Err(anyhow::anyhow!("taphook exited at start-up")),
    };
    match ready {
        Ok(()) => Ok(child),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "{e}\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ))
        }
    }
}

/// A config for a taphook a test starts by hand.
pub struct HandConfig {
    pub path: PathBuf,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

/// Writes `dir/taphook.yaml`: free loopback ports, `rules/` (made here),
/// `data/`, `upstream`, then the `extra` lines.
pub fn hand_config(dir: &Path, upstream: &str, extra: &str) -> HandConfig {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let path = dir.join("taphook.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: {proxy}
admin_listen: {admin}
upstream: {upstream}
rules_dir: rules
data_dir: data
{extra}"
        ),
    )
    .unwrap();
    HandConfig { path, proxy, admin }
}

/// Runs `taphook <args> <config>` to its end: whether it succeeded, and
/// what it printed (standard error, then standard output).
pub fn taphook_output(args: &[&str], config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(args)
        .arg(config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), text)
}

/// Runs `taphook check --rules` on a directory holding the OneSchema
/// profile and `files`; returns the exit code and what it printed.
pub fn check_rules(files: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("oneschema.yaml"),
        taphook::demo::ONESCHEMA_PROFILE,
    )
    .unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["check", "--rules"])
        .arg(dir.path())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The catalog's schema of `format` (`oneschema`, `dromo`, `dromo-basic`,
/// `flatfile`, `standard-webhooks`) for `event_type`, as taphook publishes
/// it for this stack's rules (`GET /v1/catalog/schemas/...` serves the same;
/// `tests/catalog.rs` checks that).
pub fn catalog_schema(stack: &Stack, format: &str, event_type: &str) -> Value {
    let rules = taphook::rules::load_dir(&stack.rules_dir(), &|name| std::env::var(name).ok())
        .expect("the stack's rules load");
    let shape = taphook::catalog::Shape::parse(format).expect("a catalog format");
    taphook::catalog::Catalog::new(&rules)
        .schema(shape, event_type)
        .unwrap_or_else(|| panic!("no schema for {format}/{event_type}"))
}

/// What `instance` breaks of `schema` (empty: it validates).
pub fn schema_errors(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::draft202012::new(schema).expect("a valid 2020-12 schema");
    validator
        .iter_errors(instance)
        .map(|e| format!("{e} (at `{}`)", e.instance_path()))
        .collect()
}

/// Panics unless a delivered body (or, for `standard-webhooks`, its
/// headers as an object) validates against the published schema.
pub fn assert_in_catalog(stack: &Stack, format: &str, event_type: &str, instance: &Value) {
    let schema = catalog_schema(stack, format, event_type);
    let errors = schema_errors(&schema, instance);
    assert!(
        errors.is_empty(),
        "the {format} body of {event_type} does not match its published schema:\n{}\n{instance:#}",
        errors.join("\n")
    );
}

/// A Standard Webhooks request's headers, as the object the catalog's
/// `standard-webhooks` schema describes.
pub fn signature_headers(r: &taphook::demo::receiver::Recorded) -> Value {
    let pick = |n: &str| {
        r.header(n)
            .map_or(Value::Null, |v| Value::String(v.to_string()))
    };
    json!({
        "webhook-id": pick("webhook-id"),
        "webhook-timestamp": pick("webhook-timestamp"),
        "webhook-signature": pick("webhook-signature"),
    })
}
