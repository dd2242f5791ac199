//! The JetStream backend: three taphook instances (real processes) in
//! front of one reference importer, sharing one delivery pipeline on a
//! real `nats-server` with JetStream (loopback, a free port, its own store
//! directory), delivering to one recording receiver.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::nats::Nats;
use common::ordered::{step_by_step, Recorder};
use common::*;
use futures::StreamExt as _;
use serde_json::{json, Value};
use taphook::demo::importer::ReferenceImporter;
use taphook::demo::receiver::Receiver;
use taphook::demo::{free_port, multipart_file, PROFILES};

/// One taphook instance.
struct Replica {
    dir: PathBuf,
    proxy: SocketAddr,
    admin: SocketAddr,
    child: Child,
}

impl Replica {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("taphook.log")).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The importer, the receiver, NATS, and `n` instances.
struct Cluster {
    importer: ReferenceImporter,
    receiver: Receiver,
    nats: Nats,
    replicas: Vec<Replica>,
    client: reqwest::Client,
    /// More `delivery:` settings, each line indented by two spaces.
    delivery: String,
    _dir: tempfile::TempDir,
}

/// Webhooks: `a` and `b` get everything; `slow` only columns_mapped.
const HOOKS: &str = "webhooks:
  - key: a
    url: {receiver}/a
    events: [\"*\"]
  - key: b
    url: {receiver}/b
    events: [\"*\"]
    format: oneschema
";

impl Cluster {
    async fn start(n: usize, hooks: &str) -> Cluster {
        Self::start_with(n, hooks, "").await
    }

    async fn start_with(n: usize, hooks: &str, delivery: &str) -> Cluster {
        let importer = ReferenceImporter::start().await.unwrap();
        let receiver = Receiver::start().await.unwrap();
        let nats = Nats::start();
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        for (name, text) in PROFILES {
            std::fs::write(rules.join(name), text).unwrap();
        }
        let base = format!("http://{}", receiver.addr);
        std::fs::write(rules.join("hooks.yaml"), hooks.replace("{receiver}", &base)).unwrap();
        let mut cluster = Cluster {
            importer,
            receiver,
            nats,
            replicas: Vec::new(),
            client: client(),
            delivery: delivery.to_string(),
            _dir: dir,
        };
        for i in 0..n {
            let r = cluster.launch(i).await;
            cluster.replicas.push(r);
        }
        cluster
    }

    async fn launch(&self, i: usize) -> Replica {
        let dir = self._dir.path().join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        for _attempt in 0..3 {
            let (proxy_port, admin_port) = (free_port().unwrap(), free_port().unwrap());
            let config = format!(
                "listen: 127.0.0.1:{proxy_port}\nupstream: {}\nadmin_listen: 127.0.0.1:{admin_port}\nadmin_token: t0k\nsession_secret: cluster-wide-secret\nrules_dir: ../rules\ndata_dir: data\nthreads: 1\ndelivery:\n  timeout: 1s\n  allow_private_networks: [127.0.0.0/8]\n{}store:\n  backend: jetstream\n  url: {}\n",
                self.importer.url(),
                self.delivery,
                self.nats.url()
            );
            std::fs::write(dir.join("taphook.yaml"), config).unwrap();
            let proxy: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
            match launch(&dir, admin, proxy, "info,taphook=debug", &[]).await {
                Ok(child) => {
                    return Replica {
                        dir,
                        proxy,
                        admin,
                        child,
                    }
                }
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("replica {i} did not start:\n{log}"),
            }
        }
        panic!("no free ports");
    }

    async fn create_embed(&self, via: usize, template: &str) -> u64 {
        let r = self
            .client
            .post(self.replicas[via].url("/v1/embeds"))
            .json(&json!({"template_key": template}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["id"].as_u64().unwrap()
    }

    async fn post(&self, via: usize, path: &str, body: Value, headers: &[(&str, &str)]) {
        let mut req = self.client.post(self.replicas[via].url(path)).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    /// Events received on `path`, by UUID, with how often each arrived.
    fn arrivals(&self, path: &str) -> BTreeMap<String, (usize, Value)> {
        let mut out: BTreeMap<String, (usize, Value)> = BTreeMap::new();
        for r in self.receiver.received_on(path) {
            let event = r.json();
            let uuid = event["uuid"].as_str().unwrap().to_string();
            out.entry(uuid).or_insert((0, event)).0 += 1;
        }
        out
    }

    /// Waits until `path` has `n` distinct events (up to `limit`).
    async fn wait_distinct(
        &self,
        path: &str,
        n: usize,
        limit: Duration,
    ) -> BTreeMap<String, (usize, Value)> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.arrivals(path);
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replica `i`'s /metrics.
    async fn metrics(&self, i: usize) -> String {
        let url = format!("http://{}/metrics", self.replicas[i].admin);
        let r = self.client.get(url).send().await.unwrap();
        r.text().await.unwrap()
    }

    /// An admin API call to replica `i`: the status and the JSON body.
    async fn api(&self, i: usize, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://{}{path}", self.replicas[i].admin);
        let mut req = self
            .client
            .request(method.parse().unwrap(), url)
            .bearer_auth("t0k");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or(Value::Null),
        )
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("--- replica {i}\n{}", r.log()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_spread_over_three_replicas_arrives_once_per_webhook() {
    let cluster = Cluster::start(3, HOOKS).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(cluster.create_embed(i % 3, "contacts").await);
    }
    // The next step comes later, through another replica (as a user's
    // would, seconds later: the session is known by then).
    cluster
        .wait_distinct("/a", 30, Duration::from_secs(20))
        .await;
    for (i, id) in ids.iter().enumerate() {
        cluster
            .post(
                (i + 1) % 3,
                &format!("/v1/embeds/{id}/set-header"),
                json!({"index": 0}),
                &[],
            )
            .await;
    }
    for hook in ["/a", "/b"] {
        let got = cluster
            .wait_distinct(hook, 60, Duration::from_secs(20))
            .await;
        assert_eq!(got.len(), 60, "{hook}\n{}", cluster.logs());
        settle(Duration::from_millis(500)).await;
        let got = cluster.arrivals(hook);
        let twice: Vec<_> = got.iter().filter(|(_, (n, _))| *n != 1).collect();
        assert!(
            twice.is_empty(),
            "{hook}: delivered more than once: {twice:?}"
        );
    }
    // Each replica delivered some: one pipeline, shared.
    let mut delivered = Vec::new();
    for i in 0..cluster.replicas.len() {
        let text = cluster.metrics(i).await;
        delivered.push(
            metric_value(
                &text,
                "taphook_deliveries_total{outcome=\"delivered\",webhook=\"a\"}",
            ) + metric_value(
                &text,
                "taphook_deliveries_total{outcome=\"delivered\",webhook=\"b\"}",
            ),
        );
    }
    assert_eq!(delivered.iter().sum::<f64>(), 120.0, "{delivered:?}");
    assert!(
        delivered.iter().filter(|n| **n > 0.0).count() >= 2,
        "{delivered:?}"
    );
    // Search finds an event by its UUID through any replica, with its
    // deliveries to both webhooks.
    let uuid = headers_uuid(&cluster);
    let (_, found) = cluster
        .api(1, "GET", &format!("/v1/search?q={uuid}"), None)
        .await;
    assert_eq!(
        found["events"][0]["event"]["uuid"],
        uuid.as_str(),
        "{found}"
    );
    let mut hooks: Vec<&str> = found["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["webhook"].as_str())
        .collect();
    hooks.sort();
    assert!(hooks.iter().all(|h| ["a", "b"].contains(h)), "{found}");
    // Webhook a's 7-day history is the cluster's: every replica's attempts
    // (each shares its hours every 5 s), asked of any one of them.
    let mut attempted = 0;
    for i in 0..cluster.replicas.len() {
        let text = cluster.metrics(i).await;
        let a = "taphook_deliveries_total{outcome=\"delivered\",webhook=\"a\"}";
        attempted += usize::from(metric_value(&text, a) > 0.0);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, history) = cluster
            .api(2, "GET", "/v1/event-webhooks/a/history", None)
            .await;
        if history["attempts"] == 60 {
            assert_eq!(history["instances"], attempted, "{history}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the history does not add up to the cluster's 60 attempts: {history}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The header step derived through another replica than the session's
    // creation still carries the session's template_key.
    let headers: Vec<Value> = cluster
        .arrivals("/a")
        .into_values()
        .map(|(_, e)| e)
        .filter(|e| e["event_type"] == "header_selected")
        .collect();
    assert_eq!(headers.len(), 30);
    assert!(
        headers.iter().all(|e| e["template_key"] == "contacts"),
        "{headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_through_two_replicas_is_one_event() {
    let cluster = Cluster::start(3, HOOKS).await;
    let id = cluster.create_embed(0, "orders").await;
    // The next step comes once the creation is in (a user's would come
    // seconds later): then the log's order is the session's.
    cluster
        .wait_distinct("/a", 1, Duration::from_secs(10))
        .await;
    // A client retry that lands on another replica.
    for via in [1, 2] {
        cluster
            .post(
                via,
                &format!("/v1/embeds/{id}/resume"),
                json!({}),
                &[("idempotency-key", "retry-1")],
            )
            .await;
    }
    let got = cluster
        .wait_distinct("/a", 2, Duration::from_secs(10))
        .await;
    settle(Duration::from_secs(1)).await;
    let got_b = cluster.arrivals("/b");
    let resumed: Vec<_> = cluster
        .arrivals("/a")
        .into_values()
        .filter(|(_, e)| e["event_type"] == "embed_resumed")
        .collect();
    assert_eq!(resumed.len(), 1, "{got:?}");
    assert_eq!(resumed[0].0, 1);
    assert_eq!(resumed[0].1["template_key"], "orders");
    assert_eq!(got_b.len(), 2);
    // The event log (one stream) holds it once, whichever replica answers.
    let (status, page) = cluster
        .api(2, "GET", &format!("/v1/embeds/{id}/events"), None)
        .await;
    assert_eq!(status, 200, "{page}");
    let types: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["embed_initialized", "embed_resumed"]);
}

/// `a` answers slowly and has a 10 s timeout: ack_wait is 15 s.
const SLOW_HOOKS: &str = "webhooks:
  - key: a
    url: {receiver}/a
    events: [embed_initialized]
    timeout: 10s
  - key: b
    url: {receiver}/b
    events: [embed_initialized]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_delivery_loses_nothing() {
    let mut cluster = Cluster::start(1, SLOW_HOOKS).await;
    // Replica 0 alone takes the deliveries, and holds them: the receiver
    // answers `a` after 8 s, time enough to start two more replicas.
    cluster.receiver.default_reply("/a", Reply::Slow(8000, 200));
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(cluster.create_embed(0, "contacts").await);
    }
    assert_eq!(
        cluster
            .receiver
            .wait_for("/a", 3, Duration::from_secs(10))
            .await
            .len(),
        3
    );
    assert_eq!(
        cluster
            .wait_distinct("/b", 3, Duration::from_secs(10))
            .await
            .len(),
        3
    );
    let r1 = cluster.launch(1).await;
    let r2 = cluster.launch(2).await;
    cluster.replicas.push(r1);
    cluster.replicas.push(r2);
    let killed_at = Instant::now();
    cluster.replicas[0].kill9();
    cluster.receiver.default_reply("/a", Reply::Status(200));
    // What replica 0 held comes again, from another replica, after ack_wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = cluster.arrivals("/a");
        if got.values().all(|(n, _)| *n >= 2) && got.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{got:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        killed_at.elapsed() >= Duration::from_secs(5),
        "redelivered before ack_wait"
    );
    let got = cluster.arrivals("/a");
    let embeds: Vec<u64> = got
        .values()
        .map(|(_, e)| e["embed_id"].as_u64().unwrap())
        .collect();
    for id in &ids {
        assert!(embeds.contains(id), "{id} lost");
    }
    // `b` was acked before the kill: not sent again.
    assert!(cluster.arrivals("/b").values().all(|(n, _)| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_loses_nothing_and_the_proxy_keeps_serving() {
    let mut cluster = Cluster::start(2, HOOKS).await;
    let before = cluster.create_embed(0, "contacts").await;
    assert_eq!(
        cluster
            .wait_distinct("/a", 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    cluster.nats.kill9();
    // NATS down: requests are served as ever; events wait in the buffer.
    let mut during = Vec::new();
    for i in 0..6 {
        during.push(cluster.create_embed(i % 2, "contacts").await);
    }
    // Each replica holds its writes until NATS is back.
    for i in 0..cluster.replicas.len() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = cluster.metrics(i).await;
            let buffered = metric_value(&text, "taphook_store_buffered");
            // 3 sessions, 3 events, 6 deliveries (some may be in flight).
            if buffered >= 10.0 && metric_value(&text, "taphook_store_connected") == 0.0 {
                break;
            }
            assert!(Instant::now() < deadline, "{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    settle(Duration::from_secs(1)).await;
    cluster.nats.restart();
    for hook in ["/a", "/b"] {
        let got = cluster
            .wait_distinct(hook, 7, Duration::from_secs(30))
            .await;
        assert_eq!(got.len(), 7, "{hook}\n{}", cluster.logs());
        let embeds: Vec<u64> = got
            .values()
            .map(|(_, e)| e["embed_id"].as_u64().unwrap())
            .collect();
        for id in during.iter().chain([&before]) {
            assert!(embeds.contains(id), "{hook}: {id} lost");
        }
    }
}

/// NATS dies while writes are on the wire (up to a window of them wait for
/// their acks at once) and comes back while traffic goes on: the writes it
/// never acknowledged are sent again, and every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_the_wire_when_nats_dies_are_sent_again() {
    let mut cluster = Cluster::start(1, HOOKS).await;
    // 100 sessions at once (4 writes each), and NATS killed among them.
    let nats = cluster.nats.child.id().to_string();
    let kill = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let killed = Command::new("kill").args(["-9", &nats]).status();
        assert!(killed.unwrap().success());
    };
    let creates = (0..100).map(|_| cluster.create_embed(0, "contacts"));
    let (mut embeds, ()) = tokio::join!(futures::future::join_all(creates), kill);
    cluster.nats.kill9();
    cluster.nats.restart();
    for _ in 0..50 {
        embeds.push(cluster.create_embed(0, "contacts").await);
    }
    for hook in ["/a", "/b"] {
        let got = cluster
            .wait_distinct(hook, embeds.len(), Duration::from_secs(60))
            .await;
        let arrived: std::collections::BTreeSet<u64> = got
            .values()
            .map(|(_, e)| e["embed_id"].as_u64().unwrap())
            .collect();
        let lost: Vec<&u64> = embeds.iter().filter(|id| !arrived.contains(id)).collect();
        assert!(lost.is_empty(), "{hook}: lost {lost:?}\n{}", cluster.logs());
        assert_eq!(got.len(), embeds.len(), "{hook}");
    }
    let text = cluster.metrics(0).await;
    assert_eq!(metric_value(&text, "taphook_store_buffered"), 0.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("taphook.yaml"),
        format!("upstream: http://127.0.0.1:9\nlisten: 127.0.0.1:{}\nadmin_listen: 127.0.0.1:{}\nstore:\n  backend: jetstream\n  url: nats://127.0.0.1:{port}\n  connect_timeout: 2s\n", free_port().unwrap(), free_port().unwrap()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_taphook"))
        .args(["run", "--config"])
        .arg(dir.path().join("taphook.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot reach NATS at nats://127.0.0.1:{port}")),
        "{err}"
    );
}

/// Replicas started at the same moment on a NATS that has none of the
/// streams yet (a Deployment's first rollout) all start: each tries to
/// make the streams, and a create NATS refuses because another replica's
/// is under way is looked at again (the jetstream bench's smoke pass once
/// failed with `subjects overlap with an existing stream`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_at_the_same_moment_all_start() {
    let mut cluster = Cluster::start(0, HOOKS).await;
    let replicas = futures::future::join_all((0..3).map(|i| cluster.launch(i))).await;
    cluster.replicas = replicas;
    for replica in &cluster.replicas {
        let r = cluster
            .client
            .get(format!("http://{}/readyz", replica.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", replica.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_through_one_replica_is_known_to_another() {
    let cluster = Cluster::start(2, HOOKS).await;
    let id = cluster.create_embed(0, "invoices").await;
    cluster
        .wait_distinct("/a", 1, Duration::from_secs(10))
        .await;
    let (ct, body) = multipart_file("a.csv", "name\nAda\n");
    let r = cluster
        .client
        .post(cluster.replicas[1].url(&format!("/v1/embeds/{id}/upload")))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let got = cluster
        .wait_distinct("/a", 2, Duration::from_secs(10))
        .await;
    let uploaded = got
        .values()
        .map(|(_, e)| e)
        .find(|e| e["event_type"] == "file_uploaded")
        .expect("file_uploaded");
    assert_eq!(uploaded["template_key"], "invoices");
    assert_eq!(uploaded["embed_id"], id);
}

/// A session keyed by a hashed cookie through one replica, joined by the
/// task id its upload handed out (`session_alias`) through another: the
/// alias lives in NATS like the session, and every replica hashes alike
/// (one `session_secret`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_alias_made_through_one_replica_joins_on_another() {
    let hooks = format!("{HOOKS}{}", common::ALIAS_ROUTES);
    let cluster = Cluster::start(2, &hooks).await;
    cluster
        .post(
            0,
            "/_fixtures/echo",
            json!({"task_id": "task-5d1e", "filename": "q1.csv"}),
            &[("cookie", "sessionid=cluster-s3cr3t-cookie")],
        )
        .await;
    cluster
        .wait_distinct("/a", 1, Duration::from_secs(10))
        .await;
    let r = cluster
        .client
        .get(cluster.replicas[1].url("/_fixtures/empty?task=task-5d1e"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let got = cluster
        .wait_distinct("/a", 2, Duration::from_secs(10))
        .await;
    let events: Vec<&Value> = got.values().map(|(_, e)| e).collect();
    let key = taphook::filter::HashKey::new(b"cluster-wide-secret").hash("cluster-s3cr3t-cookie");
    let done = events
        .iter()
        .find(|e| e["event_type"] == "import_succeeded")
        .unwrap_or_else(|| panic!("{events:?}\n{}", cluster.logs()));
    assert_eq!(done["embed_id"], key.as_str());
    assert_eq!(done["data"], json!({"filename": "q1.csv"}));
    assert!(
        events.iter().all(|e| e["embed_id"] == key.as_str()),
        "{events:?}"
    );
}

/// Retries wait parked (holding no slot), in order; out of retries, a
/// delivery is a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_policy_and_end_in_dead_letters() {
    let hooks = "webhooks:
  - key: a
    url: {receiver}/a
    events: [embed_initialized]
    retry: { on: [500], max_retries: 2, backoff: [300ms, 300ms] }
  - key: b
    url: {receiver}/b
    events: [embed_initialized]
    retry: { on: [500], max_retries: 1, backoff: [300ms] }
";
    let cluster = Cluster::start(2, hooks).await;
    cluster
        .receiver
        .script("/a", &[Reply::Status(500), Reply::Status(500)]);
    cluster.receiver.default_reply("/b", Reply::Status(500));
    let started = Instant::now();
    let session = cluster.create_embed(1, "contacts").await;
    let got = cluster
        .receiver
        .wait_for("/a", 3, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 3, "{}", cluster.logs());
    // Two backoffs of 300 ms (plus up to 10% jitter) between the attempts.
    assert!(got[2].at - got[0].at >= Duration::from_millis(600));
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(
        cluster
            .receiver
            .wait_for("/b", 2, Duration::from_secs(10))
            .await
            .len(),
        2
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut delivered, mut dead) = (0.0, 0.0);
    while Instant::now() < deadline && (delivered, dead) != (1.0, 1.0) {
        (delivered, dead) = (0.0, 0.0);
        for i in 0..cluster.replicas.len() {
            let text = cluster.metrics(i).await;
            delivered += metric_value(
                &text,
                "taphook_deliveries_total{outcome=\"delivered\",webhook=\"a\"}",
            );
            dead += metric_value(
                &text,
                "taphook_deliveries_total{outcome=\"dead\",webhook=\"b\"}",
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((delivered, dead), (1.0, 1.0));
    settle(Duration::from_secs(1)).await;
    assert_eq!(cluster.receiver.received_on("/a").len(), 3);
    assert_eq!(cluster.receiver.received_on("/b").len(), 2);

    // The dead letter, through any replica's admin API, and sent again.
    let (status, page) = cluster
        .api(0, "GET", "/v1/deliveries?state=dead&webhook=b", None)
        .await;
    assert_eq!(status, 200, "{page}");
    let dead = page["deliveries"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{page}");
    assert_eq!(dead[0]["state"], "dead");
    assert_eq!(dead[0]["webhook"], "b");
    assert_eq!(dead[0]["attempts"], 2);
    assert_eq!(dead[0]["last_status"], "500");
    assert_eq!(dead[0]["event_type"], "embed_initialized");
    let id = dead[0]["id"].as_i64().unwrap();
    let (status, one) = cluster
        .api(1, "GET", &format!("/v1/deliveries/{id}"), None)
        .await;
    assert_eq!(
        (status, &one["delivery"]["event_uuid"]),
        (200, &dead[0]["event_uuid"])
    );
    assert!(id < 0, "dead letters have negative ids: {id}");
    assert_eq!(one["payload"][0]["embed_id"], json!(session));
    // The session's deliveries: the dead letter (delivered ones have
    // left the work queue), found by its session through any replica.
    let (status, of_session) = cluster
        .api(
            0,
            "GET",
            &format!("/v1/sessions/{session}/deliveries"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{of_session}");
    assert_eq!(of_session["deliveries"], json!([dead[0]]));
    assert_eq!(dead[0]["session"], session.to_string());
    let (_, none) = cluster
        .api(1, "GET", "/v1/deliveries?state=dead&session=no-such", None)
        .await;
    assert_eq!(none["deliveries"], json!([]));
    // Sent again while the receiver still fails: it runs its retries
    // afresh and is a dead letter again, with a new id.
    let (status, _) = cluster
        .api(1, "POST", &format!("/v1/deliveries/{id}/retry"), None)
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        cluster
            .receiver
            .wait_for("/b", 4, Duration::from_secs(10))
            .await
            .len(),
        4
    );
    let again = wait_dead(&cluster, "b", 1).await;
    let id2 = again[0]["id"].as_i64().unwrap();
    assert_ne!(id2, id);
    assert_eq!(again[0]["event_uuid"], dead[0]["event_uuid"]);
    // A pending delivery is not "retried": it is on its way.
    assert_eq!(
        cluster
            .api(0, "POST", "/v1/deliveries/1/retry", None)
            .await
            .0,
        409
    );
    cluster.receiver.default_reply("/b", Reply::Status(200));
    let (status, _) = cluster
        .api(1, "POST", &format!("/v1/deliveries/{id2}/retry"), None)
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        cluster
            .receiver
            .wait_for("/b", 5, Duration::from_secs(10))
            .await
            .len(),
        5
    );
    assert!(wait_dead(&cluster, "b", 0).await.is_empty());
    let (status, _) = cluster
        .api(0, "POST", &format!("/v1/deliveries/{id2}/retry"), None)
        .await;
    assert_eq!(status, 404);

    // Replay: every dead letter of a webhook since a time.
    cluster.receiver.default_reply("/b", Reply::Status(500));
    cluster.create_embed(0, "contacts").await;
    cluster.create_embed(1, "contacts").await;
    assert_eq!(wait_dead(&cluster, "b", 2).await.len(), 2);
    cluster.receiver.default_reply("/b", Reply::Status(200));
    let (status, body) = cluster
        .api(
            1,
            "POST",
            "/v1/deliveries/replay",
            Some(json!({"webhook": "b", "since": "1h"})),
        )
        .await;
    assert_eq!((status, &body["requeued"]), (200, &json!(2)), "{body}");
    assert_eq!(
        cluster
            .receiver
            .wait_for("/b", 5 + 4 + 2, Duration::from_secs(10))
            .await
            .len(),
        11
    );
}

/// A webhook created through one replica's admin API reaches every
/// replica, also one started later; a deletion too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_changes_reach_every_replica() {
    let mut cluster = Cluster::start(2, HOOKS).await;
    let url = format!("http://{}/c", cluster.receiver.addr);
    let (status, body) = cluster
        .api(
            0,
            "POST",
            "/v1/event-webhooks",
            Some(json!({"webhook_key": "c", "url": url, "events": ["embed_initialized"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    wait_webhook(&cluster, 1, 200).await;
    // Events derived by the other replica reach the new webhook.
    cluster.create_embed(1, "contacts").await;
    assert_eq!(
        cluster
            .wait_distinct("/c", 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    // A replica started later catches up.
    let late = cluster.launch(2).await;
    cluster.replicas.push(late);
    wait_webhook(&cluster, 2, 200).await;
    let (status, _) = cluster.api(2, "DELETE", "/v1/event-webhooks/c", None).await;
    assert_eq!(status, 204);
    wait_webhook(&cluster, 0, 404).await;
    wait_webhook(&cluster, 1, 404).await;
}

/// Waits until replica `i` answers `expected` for webhook `c`.
async fn wait_webhook(cluster: &Cluster, i: usize, expected: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = cluster.api(i, "GET", "/v1/event-webhooks/c", None).await;
        if status == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica {i}: {status}, not {expected}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn gauge(cluster: &Cluster, i: usize, sample: &str) -> f64 {
    metric_value(&cluster.metrics(i).await, sample)
}

async fn wait_gauge(cluster: &Cluster, i: usize, sample: &str, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(cluster, i, sample).await != expected {
        assert!(
            Instant::now() < deadline,
            "replica {i}: {sample} is not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The UUID of an event that reached `/a` (embed_initialized: its session
/// has no later step waiting, so its deliveries are settled or dead).
fn headers_uuid(cluster: &Cluster) -> String {
    cluster
        .arrivals("/a")
        .into_values()
        .map(|(_, e)| e)
        .find(|e| e["event_type"] == "header_selected")
        .and_then(|e| e["uuid"].as_str().map(str::to_string))
        .expect("a header_selected event")
}

/// A 410 disables the webhook on every replica; its deliveries wait until
/// it is enabled again (through any replica), then go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_webhook_cluster_wide_until_enabled() {
    let cluster = Cluster::start(2, HOOKS).await;
    cluster.receiver.default_reply("/a", Reply::Status(410));
    cluster.create_embed(0, "contacts").await;
    assert_eq!(
        cluster
            .receiver
            .wait_for("/a", 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    for i in 0..2 {
        wait_gauge(&cluster, i, "taphook_webhook_disabled{webhook=\"a\"}", 1.0).await;
    }
    // Shown as it is: held (and why), its attempt counted, no retry
    // spent, no next attempt, listed as failed; the attempt in full.
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = loop {
        let (_, page) = cluster
            .api(1, "GET", "/v1/deliveries?state=failed&webhook=a", None)
            .await;
        if let Some(d) = page["deliveries"].as_array().and_then(|d| d.first()) {
            break d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the 410'd delivery is not listed as failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(held["state"], "held", "{held}");
    assert_eq!(held["attempts"], 1, "{held}");
    assert_eq!(held["retries_spent"], 0, "{held}");
    assert_eq!(held["next_attempt_at"], Value::Null, "{held}");
    assert!(held["held_reason"].as_str().unwrap().contains("410 Gone"));
    let id = held["id"].as_i64().unwrap();
    let (_, listed) = cluster
        .api(0, "GET", "/v1/deliveries?state=held", None)
        .await;
    assert_eq!(listed["deliveries"][0]["id"], id, "{listed}");
    let (_, whoami) = cluster.api(0, "GET", "/v1/whoami", None).await;
    assert_eq!(whoami["store"], "jetstream");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, shown) = cluster
            .api(0, "GET", &format!("/v1/deliveries/{id}"), None)
            .await;
        if shown["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
            assert_eq!(shown["attempts"][0]["response"]["status"], 410, "{shown}");
            assert_eq!(shown["attempts"][0]["request"]["method"], "POST");
            break;
        }
        assert!(Instant::now() < deadline, "no attempt record: {shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..4 {
        cluster.create_embed(i % 2, "contacts").await;
    }
    assert_eq!(
        cluster
            .wait_distinct("/b", 5, Duration::from_secs(10))
            .await
            .len(),
        5
    );
    settle(Duration::from_secs(1)).await;
    assert_eq!(
        cluster.receiver.received_on("/a").len(),
        1,
        "sent while disabled"
    );
    cluster.receiver.default_reply("/a", Reply::Status(200));
    let (status, _) = cluster
        .api(1, "POST", "/v1/event-webhooks/a/enable", None)
        .await;
    assert_eq!(status, 200);
    let got = cluster
        .wait_distinct("/a", 5, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 5, "{}", cluster.logs());
    wait_gauge(&cluster, 0, "taphook_webhook_disabled{webhook=\"a\"}", 0.0).await;
    // The audit trail is the cluster's: the enable made through replica 1
    // is listed by replica 0.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, audit) = cluster.api(0, "GET", "/v1/audit", None).await;
        let entries = audit["entries"].as_array().cloned().unwrap_or_default();
        if let Some(e) = entries.first() {
            assert_eq!(
                e["action"], "POST /v1/event-webhooks/{key}/enable",
                "{audit}"
            );
            assert_eq!(e["target"], "/v1/event-webhooks/a/enable");
            assert_eq!(e["outcome"]["status"], 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no audit entry on replica 0: {audit}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A webhook failing for `pause_after` is paused on every replica: one
/// probe per `probe_interval` across the cluster, without spending the
/// deliveries' retries; the first success resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_paused_and_probed_cluster_wide() {
    let hooks = "webhooks:
  - key: a
    url: {receiver}/a
    events: [embed_initialized]
    retry: { on: [500], max_retries: 100, backoff: [100ms] }
";
    let cluster = Cluster::start_with(2, hooks, "  pause_after: 1s\n  probe_interval: 1s\n").await;
    cluster.receiver.default_reply("/a", Reply::Status(500));
    for i in 0..4 {
        cluster.create_embed(i % 2, "contacts").await;
    }
    for i in 0..2 {
        wait_gauge(&cluster, i, "taphook_webhook_paused{webhook=\"a\"}", 1.0).await;
    }
    // Paused: about one probe a second, whichever replica claims it, and
    // the probes spend no retries (the attempt counts stay as they were).
    settle(Duration::from_millis(500)).await;
    let attempts = || async {
        let (_, page) = cluster
            .api(0, "GET", "/v1/deliveries?state=pending&webhook=a", None)
            .await;
        let mut by_event: Vec<(String, i64)> = page["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["event_uuid"].as_str().unwrap().to_string(),
                    d["retries_spent"].as_i64().unwrap(),
                )
            })
            .collect();
        by_event.sort();
        by_event
    };
    let before = cluster.receiver.received_on("/a").len();
    let counts = attempts().await;
    assert_eq!(counts.len(), 4, "{counts:?}");
    settle(Duration::from_secs(3)).await;
    let probes = cluster.receiver.received_on("/a").len() - before;
    assert!(
        (1..=5).contains(&probes),
        "{probes} requests in 3 s while paused"
    );
    assert_eq!(attempts().await, counts);
    cluster.receiver.default_reply("/a", Reply::Status(200));
    let got = cluster
        .wait_distinct("/a", 4, Duration::from_secs(15))
        .await;
    assert_eq!(got.len(), 4, "{}", cluster.logs());
    wait_gauge(&cluster, 0, "taphook_webhook_paused{webhook=\"a\"}", 0.0).await;
}

/// Waits until webhook `hook` has `n` dead letters; returns them.
async fn wait_dead(cluster: &Cluster, hook: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let path = format!("/v1/deliveries?state=dead&webhook={hook}");
        let (_, page) = cluster.api(0, "GET", &path, None).await;
        let dead = page["deliveries"].as_array().cloned().unwrap_or_default();
        if dead.len() == n {
            return dead;
        }
        assert!(Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Renaming a webhook moves its waiting deliveries to the new key;
/// deleting it makes them dead letters (as with the embedded store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_and_deleted_webhooks_keep_their_backlog() {
    let cluster = Cluster::start(2, HOOKS).await;
    let url = format!("http://{}/c", cluster.receiver.addr);
    let body = json!({"webhook_key": "c", "url": url, "events": ["embed_initialized"]});
    assert_eq!(
        cluster
            .api(0, "POST", "/v1/event-webhooks", Some(body))
            .await
            .0,
        201
    );
    wait_webhook(&cluster, 1, 200).await;
    // The receiver is down: the deliveries wait (retried for a while).
    cluster.receiver.default_reply("/c", Reply::Status(503));
    let hold = json!({"retry": {"on": [503], "max_retries": 50, "backoff": ["500ms"]}});
    assert_eq!(
        cluster
            .api(0, "PUT", "/v1/event-webhooks/c", Some(hold))
            .await
            .0,
        200
    );
    for i in 0..3 {
        cluster.create_embed(i % 2, "contacts").await;
    }
    let failed = cluster
        .wait_distinct("/c", 3, Duration::from_secs(10))
        .await;
    assert_eq!(failed.len(), 3);
    // Renamed: the backlog follows, and arrives once the receiver is back.
    let renamed = json!({"new_webhook_key": "d"});
    let (status, body) = cluster
        .api(1, "PUT", "/v1/event-webhooks/c", Some(renamed))
        .await;
    assert_eq!(status, 200, "{body}");
    let before = cluster.receiver.received_on("/c").len();
    cluster.receiver.default_reply("/c", Reply::Status(200));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Answered 200: one answered 503 just before the switch is
        // still pending.
        let after: std::collections::BTreeSet<String> = cluster.receiver.received_on("/c")
            [before..]
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.json()["uuid"].as_str().unwrap().to_string())
            .collect();
        if failed.keys().all(|uuid| after.contains(uuid)) {
            break;
        }
        assert!(Instant::now() < deadline, "{after:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Deleted with a backlog: dead letters, replayable.
    cluster.receiver.default_reply("/c", Reply::Status(503));
    let before = cluster.receiver.received_on("/c").len();
    cluster.create_embed(0, "contacts").await;
    cluster
        .receiver
        .wait_for("/c", before + 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        cluster
            .api(1, "DELETE", "/v1/event-webhooks/d", None)
            .await
            .0,
        204
    );
    let dead = wait_dead(&cluster, "d", 1).await;
    assert_eq!(dead[0]["last_status"], "webhook deleted");
}

/// A webhook's rate limit holds for the cluster, not per replica: 500
/// events pushed through three replicas, limited to 100/s with a burst of
/// 10, arrive over at least 4.5 s (490 after the burst take 4.9 s), with no
/// 1 s window above the burst and a second's worth. One replica alone
/// would send them in 4.9 s; three each on its own bucket, in 1.6 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_the_webhooks_across_three_replicas() {
    let hooks = "webhooks:
  - key: limited
    url: {receiver}/limited
    events: [embed_initialized]
    rate_limit: { per_second: 100, burst: 10 }
";
    let cluster = Cluster::start(3, hooks).await;
    let pushes = (0..500).map(|i| {
        let body = json!({"event_type": "embed_initialized", "embed_id": format!("s{i}")});
        let cluster = &cluster;
        async move {
            let (status, body) = cluster.api(i % 3, "POST", "/v1/events", Some(body)).await;
            assert_eq!(status, 202, "{body}");
        }
    });
    futures::stream::iter(pushes)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let got = cluster
        .receiver
        .wait_for("/limited", 500, Duration::from_secs(40))
        .await;
    assert_eq!(got.len(), 500, "{}", cluster.logs());
    settle(Duration::from_millis(500)).await;
    assert_eq!(cluster.receiver.received_on("/limited").len(), 500);
    let mut times: Vec<Instant> = got.iter().map(|r| r.at).collect();
    times.sort();
    let span = *times.last().unwrap() - times[0];
    assert!(span >= Duration::from_millis(4500), "{span:?}");
    let mut most = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while *t - times[start] >= Duration::from_secs(1) {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    assert!(most <= 110 + 3, "{most} in one second");
    // Every replica took part, and waiting was counted.
    let mut limited = 0.0;
    for i in 0..3 {
        let text = cluster.metrics(i).await;
        let sent = metric_value(
            &text,
            "taphook_delivery_attempts_total{status_class=\"2xx\",webhook=\"limited\"}",
        );
        assert!(sent > 0.0, "replica {i} sent none");
        limited += metric_value(
            &text,
            "taphook_webhook_rate_limited_total{webhook=\"limited\"}",
        );
    }
    assert!(limited > 0.0);
}

/// `ordering: session` across three replicas: each session's deliveries
/// go out one at a time, in the order the cluster accepted them, whichever
/// replica pulls them, through retries and a replica killed mid-way and
/// started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_by_session_holds_across_three_replicas() {
    let (rec, url) = Recorder::start().await;
    let hooks = format!(
        "webhooks:\n  - key: ordered\n    url: {url}\n    events: [\"*\"]\n    ordering: session\n    retry: {{ on: [503, timeout, error], max_retries: 10, backoff: [300ms] }}\n"
    );
    let mut cluster = Cluster::start(3, &hooks).await;
    let sessions: Vec<String> = (0..20).map(|s| format!("session-{s}")).collect();
    // One at a time through replica 0: accepted in this order.
    for event in step_by_step(&sessions) {
        let (status, body) = cluster.api(0, "POST", "/v1/events", Some(event)).await;
        assert_eq!(status, 202, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while rec.delivered() < 40 {
        assert!(Instant::now() < deadline, "{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A replica killed mid-way: what it held comes back after ack_wait,
    // and its sessions' later deliveries wait for it. Then it starts again.
    cluster.replicas[1].kill9();
    let replica = cluster.launch(1).await;
    cluster.replicas[1] = replica;
    rec.wait_done(&sessions, Duration::from_secs(90), || cluster.logs())
        .await;
    rec.assert_in_order(&sessions);
    // The replicas that ran throughout took part (the restarted one's
    // counters started again).
    for i in [0, 2] {
        let text = cluster.metrics(i).await;
        let sent = metric_value(
            &text,
            "taphook_delivery_attempts_total{status_class=\"2xx\",webhook=\"ordered\"}",
        );
        assert!(sent > 0.0, "replica {i} sent none\n{}", cluster.logs());
    }
}

/// Deliveries stored by an earlier build, on subjects without a session
/// (`taphook.deliveries.<webhook>`, `taphook.retry.<webhook>`), move to
/// their session's subject when an instance connects, keep their place in
/// their session, and are delivered; the earlier build's consumer being
/// there changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_on_the_subjects_of_earlier_builds_are_delivered() {
    let hooks = "webhooks:\n  - key: legacy\n    url: {receiver}/legacy\n    events: [\"*\"]\n    ordering: session\n";
    let mut cluster = Cluster::start(1, hooks).await;
    cluster.replicas[0].kill9();
    let js = async_nats::jetstream::new(async_nats::connect(cluster.nats.url()).await.unwrap());
    js.get_stream("taphook_DELIVERIES")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("taphook_wh_legacy".into()),
            filter_subject: "taphook.deliveries.legacy".into(),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    // Session a's first event waits for a retry (moved after the waiting
    // ones), its second waits its turn; session b's one waits too.
    let old = [
        ("retry", "old-a", "embed_initialized"),
        ("deliveries", "old-a", "file_uploaded"),
        ("deliveries", "old-b", "embed_initialized"),
    ];
    for (i, (kind, session, event_type)) in old.iter().enumerate() {
        let uuid = format!("00000000-0000-4000-8000-00000000000{i}");
        let body = json!({"event": {
            "uuid": uuid, "embed_id": session, "embed_jwt": null,
            "environment_name": "production", "template_key": "contacts",
            "event_type": event_type, "trigger_type": "api",
            "data": {}, "created_at": 1.0
        }});
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("legacy:{uuid}").as_str());
        headers.insert("Taphook-Attempts", if *kind == "retry" { "1" } else { "0" });
        headers.insert("Taphook-Due", "0");
        js.publish_with_headers(
            format!("taphook.{kind}.legacy"),
            headers,
            body.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let replica = cluster.launch(0).await;
    cluster.replicas[0] = replica;
    let got = cluster
        .wait_distinct("/legacy", 3, Duration::from_secs(20))
        .await;
    assert_eq!(got.len(), 3, "{}", cluster.logs());
    let session_a: Vec<String> = cluster
        .receiver
        .received_on("/legacy")
        .iter()
        .map(|r| r.json())
        .filter(|e| e["embed_id"] == "old-a")
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(session_a, ["embed_initialized", "file_uploaded"]);
    assert!(cluster.replicas[0]
        .log()
        .contains("deliveries moved to their session's subject"));
}
