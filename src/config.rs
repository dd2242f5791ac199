//! The config file (YAML): read with the rules' source loader (so errors
//! carry lines and `${NAME}` works), then lowered into [`Config`].
//! Relative paths are taken from the config file's directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::deliver::guard::Cidr;
use crate::funnel::{FunnelConfig, Stage};
use crate::rules::error::{Problem, Problems};
use crate::rules::source::Document;
use crate::rules::units::{Dur, Size};
use crate::secret::Secret;

/// What an admin token may do; each role can do what the ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything that is read.
    Read,
    /// Also retry, replay, enable and test events.
    Operate,
    /// Also webhooks and the OS1 registry.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operate => "operate",
            Self::Admin => "admin",
        }
    }
}

/// A token of the admin API: its name (what the audit trail records,
/// never the token) and its role.
#[derive(Debug, Clone)]
pub struct AdminToken {
    pub name: String,
    pub token: Secret,
    pub role: Role,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdminToken {
    name: String,
    token: Secret,
    role: Role,
}

/// `admin_token` (as `admin_token`, role admin) and `admin_tokens`,
/// checked: names given and distinct, tokens given and distinct.
fn admin_tokens(
    single: Option<Secret>,
    listed: Vec<RawAdminToken>,
    doc: &Document,
    problems: &mut Vec<Problem>,
) -> Vec<AdminToken> {
    let mut out: Vec<AdminToken> = Vec::new();
    if let Some(token) = single.filter(|t| !t.expose().is_empty()) {
        out.push(AdminToken {
            name: "admin_token".into(),
            token,
            role: Role::Admin,
        });
    }
    for (i, t) in listed.into_iter().enumerate() {
        let at = |field: &str| format!("/admin_tokens/{i}/{field}");
        if t.name.trim().is_empty() {
            problems.push(doc.problem(&at("name"), "must not be empty"));
            continue;
        }
        if t.token.expose().is_empty() {
            problems.push(doc.problem(
                &at("token"),
                "must not be empty (is its ${ENV} variable set?)",
            ));
            continue;
        }
        if out.iter().any(|o| o.name == t.name) {
            problems.push(doc.problem(
                &at("name"),
                format!("`{}` is used by another token", t.name),
            ));
            continue;
        }
        if out.iter().any(|o| o.token == t.token) {
            problems.push(doc.problem(
                &at("token"),
                format!(
                    "`{}` has the same token as another one (each token is one name and one role)",
                    t.name
                ),
            ));
            continue;
        }
        out.push(AdminToken {
            name: t.name,
            token: t.token,
            role: t.role,
        });
    }
    out
}

/// `tls`: the proxy listener speaks TLS (1.2 and 1.3, ALPN `h2` and
/// `http/1.1`) with this certificate chain and key (PEM), re-read on
/// SIGHUP and when the files change; `client_ca` asks clients for a
/// certificate signed by one of these CAs (mTLS).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// Whether taphook speaks HTTP/2 to an `https` upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamH2 {
    /// HTTP/2 when the upstream offers it (ALPN), else HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Off,
}

/// `upstream_tls`: how an `https` upstream is verified and spoken to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// CA certificates (PEM) to verify the upstream with, instead of the
    /// system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The name to send (SNI) and verify, when not the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// A client certificate chain and key (PEM) for mTLS to the upstream.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub h2: UpstreamH2,
}

/// The running configuration, lowered and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// TLS on the proxy listener.
    pub tls: Option<ListenerTls>,
    /// HTTP/2 without TLS (prior knowledge) on the proxy listener, beside
    /// HTTP/1.1.
    pub listen_h2c: bool,
    pub upstream: Upstream,
    pub upstream_tls: UpstreamTls,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    /// Every token of the admin API with its name and role:
    /// `admin_tokens`, and `admin_token` as `admin_token` (role `admin`).
    pub admin_tokens: Vec<AdminToken>,
    pub rules_dir: PathBuf,
    pub data_dir: PathBuf,
    pub environment_name: String,
    pub events_retention: Duration,
    pub dedup_ttl: Duration,
    pub dedup_capacity: u64,
    pub max_body_bytes: usize,
    /// Bytes all body captures may hold at once.
    pub max_total_capture_bytes: usize,
    /// How long one body may take to arrive and still be copied.
    pub max_capture_duration: Duration,
    pub tap_queue: usize,
    /// What the tap does with a finished exchange when the queue is full.
    pub tap_when_full: WhenFull,
    pub delivery: Delivery,
    pub jwt_hs256_secret: Option<Secret>,
    /// The key of the `hash` operator; `None`: one made on the first
    /// start and kept in `data_dir`.
    pub session_secret: Option<Secret>,
    pub threads: usize,
    /// On SIGTERM, how long proxied requests in flight may finish.
    pub shutdown_grace: Duration,
    pub funnel: FunnelConfig,
    pub log: LogFormat,
    /// Where deliveries, sessions and the event log live.
    pub store: StoreBackend,
    /// Recording exchanges to HAR files (`record:`); off when `None`.
    pub record: Option<Record>,
    /// Traces (`telemetry:`); resolved with the `OTEL_*` environment by
    /// [`crate::telemetry::Settings::resolve`].
    pub telemetry: Telemetry,
}

/// `telemetry:` as written: traces are off unless `otlp` is given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    #[serde(default)]
    pub otlp: Option<Otlp>,
    /// Requests no route taps get a span too.
    #[serde(default)]
    pub trace_untapped: bool,
}

/// `telemetry.otlp:` as written; what is left out comes from the standard
/// `OTEL_EXPORTER_OTLP_*` variables, then the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// The collector's base URL (`http://collector:4318`; gRPC:
    /// `http://collector:4317`).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    /// Sent with every export (an API key); never logged.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Secret>,
    #[serde(default)]
    pub sample_ratio: Option<f64>,
}

/// `record`: the exchanges the proxy taps (or all of them) written to
/// rotating HAR files, secrets redacted.
#[derive(Debug, Clone)]
pub struct Record {
    pub dir: PathBuf,
    /// The files' total size; a file is closed at a quarter of it and the
    /// oldest deleted beyond it.
    pub max_bytes: u64,
    /// Every exchange, not only those a route could match.
    pub all: bool,
    /// Header, query parameter and JSON field names redacted besides the
    /// built-in ones (matched without regard to case).
    pub redact: Vec<String>,
    /// What replaces a secret: a pseudonym (default) or `REDACTED`.
    pub redact_mode: crate::traffic::redact::RedactMode,
    /// Print a line per entry written (`taphook record`).
    pub echo: bool,
}

/// `store.backend`: the embedded store (one instance), or NATS JetStream
/// shared by several instances.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    Embedded,
    JetStream(JetStreamConfig),
}

/// `store` with `backend: jetstream`.
#[derive(Debug, Clone, PartialEq)]
pub struct JetStreamConfig {
    /// `nats://host:port`, several separated by commas.
    pub url: String,
    /// Prefix of every stream, subject, consumer and bucket name, so
    /// several deployments can share one NATS account.
    pub prefix: String,
    /// Copies of every stream and bucket in a NATS cluster.
    pub replicas: usize,
    /// Writes held locally while NATS is unreachable; past it, dropped
    /// (counted).
    pub buffer: usize,
    pub connect_timeout: Duration,
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The importer service taphook forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    /// `https://`: TLS to the importer (`upstream_tls`).
    pub tls: bool,
}

impl Upstream {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// `tap.when_full`: what the tap does with a finished exchange when the
/// pipeline's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait up to this long for room (the client already has its
    /// response; only the connection's next request waits), then drop.
    Wait(Duration),
    /// Drop the exchange at once (counted as `tap_queue_full`).
    Drop,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawWhenFull {
    #[default]
    Wait,
    Drop,
}

/// Delivery settings shared by every webhook.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub timeout: Duration,
    pub concurrency_per_webhook: usize,
    /// How long in-flight deliveries may finish at shutdown (SIGTERM).
    pub shutdown_timeout: Duration,
    /// A webhook failing continuously this long is paused and probed.
    pub pause_after: Duration,
    /// How often a paused webhook is probed with one delivery.
    pub probe_interval: Duration,
    /// Networks a webhook URL may resolve to despite the SSRF guard.
    pub allow_private_networks: Vec<Cidr>,
    /// The rate limit of webhooks that set none.
    pub rate_limit: Option<crate::rules::model::RateLimit>,
    /// CA certificates (PEM) trusted for `https://` webhooks, `amqps://`
    /// and `rediss://` destinations, beside the public roots.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "defaults::listen")]
    listen: String,
    #[serde(default)]
    tls: Option<ListenerTls>,
    #[serde(default)]
    listen_h2c: bool,
    upstream: String,
    #[serde(default)]
    upstream_tls: UpstreamTls,
    #[serde(default = "defaults::admin_listen")]
    admin_listen: String,
    #[serde(default)]
    admin_token: Option<Secret>,
    #[serde(default)]
    admin_tokens: Vec<RawAdminToken>,
    #[serde(default)]
    session_secret: Option<Secret>,
    #[serde(default = "defaults::rules_dir")]
    rules_dir: PathBuf,
    #[serde(default = "defaults::data_dir")]
    data_dir: PathBuf,
    #[serde(default = "defaults::environment_name")]
    environment_name: String,
    #[serde(default)]
    events_retention: Option<Dur>,
    #[serde(default)]
    dedup: RawDedup,
    #[serde(default)]
    capture: RawCapture,
    #[serde(default)]
    tap: RawTap,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    jwt: RawJwt,
    #[serde(default)]
    threads: Option<usize>,
    #[serde(default)]
    shutdown_grace: Option<Dur>,
    #[serde(default)]
    funnel: RawFunnel,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    record: Option<RawRecord>,
    #[serde(default)]
    telemetry: Telemetry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    dir: PathBuf,
    max_bytes: Option<Size>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    redact: Vec<String>,
    #[serde(default)]
    redact_mode: crate::traffic::redact::RedactMode,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    backend: RawBackend,
    url: Option<String>,
    prefix: Option<String>,
    replicas: Option<usize>,
    buffer: Option<usize>,
    connect_timeout: Option<Dur>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum RawBackend {
    #[default]
    Embedded,
    JetStream,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunnel {
    /// `0s` turns stall detection off.
    stall_after: Option<Dur>,
    max_template_keys: Option<usize>,
    /// In file order (serde_json's map keeps it), so problems come in
    /// line order.
    #[serde(default)]
    stages: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    format: LogFormat,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDedup {
    ttl: Option<Dur>,
    capacity: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    max_body_bytes: Option<Size>,
    max_total_bytes: Option<Size>,
    max_duration: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTap {
    queue_capacity: Option<usize>,
    #[serde(default)]
    when_full: RawWhenFull,
    max_wait: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    timeout: Option<Dur>,
    concurrency_per_webhook: Option<usize>,
    shutdown_timeout: Option<Dur>,
    pause_after: Option<Dur>,
    probe_interval: Option<Dur>,
    #[serde(default)]
    allow_private_networks: Vec<String>,
    #[serde(default)]
    rate_limit: Option<crate::rules::model::RawRateLimit>,
    #[serde(default)]
    ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    hs256_secret: Option<Secret>,
}

mod defaults {
    use std::path::PathBuf;
    pub fn listen() -> String {
        "0.0.0.0:8080".into()
    }
    pub fn admin_listen() -> String {
        "127.0.0.1:9900".into()
    }
    pub fn rules_dir() -> PathBuf {
        "./rules".into()
    }
    pub fn data_dir() -> PathBuf {
        "./data".into()
    }
    pub fn environment_name() -> String {
        "Production".into()
    }
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Problems> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Problems::one(Problem::new(path, 1, format!("cannot read config: {e}")))
        })?;
        let doc = Document::parse(path, &text, env)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_document(&doc, &base)
    }

    /// Lowers a parsed config; relative paths are joined to `base`.
    pub fn from_document(doc: &Document, base: &Path) -> Result<Self, Problems> {
        if !doc.problems.is_empty() {
            return Err(Problems(doc.problems.clone()));
        }
        let mut raw: RawConfig = serde_path_to_error::deserialize(&doc.value).map_err(|e| {
            let keys: Vec<String> = e
                .path()
                .to_string()
                .split('.')
                .filter(|s| !s.is_empty() && *s != "?")
                .map(str::to_string)
                .collect();
            let pointer: String = keys.iter().map(|k| format!("/{k}")).collect();
            let inner = e.inner().to_string();
            // As in the rules: the key, then what is wrong with its value.
            let reason = if keys.is_empty() || inner.starts_with("unknown field") {
                inner
            } else {
                format!("`{}`: {inner}", keys.join("."))
            };
            Problems::one(doc.problem(&pointer, reason))
        })?;
        let mut problems = Vec::new();
        let mut addr = |key: &str, text: &str| -> SocketAddr {
            text.parse().unwrap_or_else(|_| {
                problems.push(doc.problem(&format!("/{key}"), format!("`{key}`: invalid address `{text}`: expected host:port such as 127.0.0.1:8080")));
                SocketAddr::from(([0, 0, 0, 0], 0))
            })
        };
        let listen = addr("listen", &raw.listen);
        let admin_listen = addr("admin_listen", &raw.admin_listen);
        let upstream = parse_upstream(&raw.upstream).unwrap_or_else(|reason| {
            problems.push(doc.problem("/upstream", reason));
            Upstream {
                host: String::new(),
                port: 0,
                tls: false,
            }
        });
        check_tls(&raw, base, doc, &mut problems);
        let mut allow_private_networks = Vec::new();
        for (i, text) in raw.delivery.allow_private_networks.iter().enumerate() {
            match Cidr::parse(text) {
                Ok(cidr) => allow_private_networks.push(cidr),
                Err(reason) => problems.push(doc.problem(
                    &format!("/delivery/allow_private_networks/{i}"),
                    format!("`delivery.allow_private_networks`: {reason}"),
                )),
            }
        }
        let funnel = lower_funnel(&raw.funnel, doc, &mut problems);
        let store = lower_store(&raw.store, doc, &mut problems);
        let concurrency = raw.delivery.concurrency_per_webhook.unwrap_or(16);
        if concurrency == 0 {
            problems.push(doc.problem("/delivery/concurrency_per_webhook", "must be at least 1"));
        }
        let rate_limit = raw.delivery.rate_limit.and_then(|r| {
            r.lower()
                .map_err(|why| problems.push(doc.problem("/delivery/rate_limit", why)))
                .ok()
        });
        check_telemetry(&raw.telemetry, doc, &mut problems);
        let admin_tokens = admin_tokens(
            raw.admin_token.clone(),
            std::mem::take(&mut raw.admin_tokens),
            doc,
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        let retention = raw
            .events_retention
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30 * 86400));
        Ok(Self {
            listen,
            tls: raw.tls.as_ref().map(|t| ListenerTls {
                cert: base.join(&t.cert),
                key: base.join(&t.key),
                client_ca: t.client_ca.as_ref().map(|p| base.join(p)),
            }),
            listen_h2c: raw.listen_h2c,
            upstream,
            upstream_tls: UpstreamTls {
                ca: raw.upstream_tls.ca.as_ref().map(|p| base.join(p)),
                client_cert: raw.upstream_tls.client_cert.as_ref().map(|p| base.join(p)),
                client_key: raw.upstream_tls.client_key.as_ref().map(|p| base.join(p)),
                ..raw.upstream_tls.clone()
            },
            admin_listen,
            admin_tokens,
            admin_token: raw.admin_token.filter(|t| !t.expose().is_empty()),
            rules_dir: base.join(raw.rules_dir),
            data_dir: base.join(raw.data_dir),
            environment_name: raw.environment_name,
            events_retention: retention,
            dedup_ttl: raw
                .dedup
                .ttl
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(86400)),
            dedup_capacity: raw.dedup.capacity.unwrap_or(1_000_000),
            max_body_bytes: raw
                .capture
                .max_body_bytes
                .map(|s| s.0 as usize)
                .unwrap_or(1 << 20),
            max_total_capture_bytes: raw
                .capture
                .max_total_bytes
                .map(|s| s.0 as usize)
                .unwrap_or(256 << 20),
            max_capture_duration: raw
                .capture
                .max_duration
                .map_or(Duration::from_secs(60), |d| d.0),
            tap_queue: raw.tap.queue_capacity.unwrap_or(10_000).max(1),
            tap_when_full: match raw.tap.when_full {
                RawWhenFull::Wait => {
                    WhenFull::Wait(raw.tap.max_wait.map_or(Duration::from_secs(5), |d| d.0))
                }
                RawWhenFull::Drop => WhenFull::Drop,
            },
            delivery: Delivery {
                timeout: raw
                    .delivery
                    .timeout
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(10)),
                concurrency_per_webhook: concurrency,
                shutdown_timeout: raw
                    .delivery
                    .shutdown_timeout
                    .map_or(Duration::from_secs(5), |d| d.0),
                pause_after: raw
                    .delivery
                    .pause_after
                    .map_or(Duration::from_secs(15 * 60), |d| d.0),
                probe_interval: raw
                    .delivery
                    .probe_interval
                    .map_or(Duration::from_secs(60), |d| d.0),
                allow_private_networks,
                rate_limit,
                ca: raw.delivery.ca.as_ref().map(|p| base.join(p)),
            },
            jwt_hs256_secret: raw.jwt.hs256_secret.filter(|s| !s.expose().is_empty()),
            session_secret: raw.session_secret.filter(|s| !s.expose().is_empty()),
            shutdown_grace: raw.shutdown_grace.map_or(Duration::from_secs(1), |d| d.0),
            funnel,
            log: raw.log.format,
            store,
            record: raw.record.map(|r| Record {
                dir: base.join(r.dir),
                max_bytes: r.max_bytes.map_or(256 << 20, |s| s.0).max(64 << 10),
                all: r.all,
                redact: r.redact,
                redact_mode: r.redact_mode,
                echo: false,
            }),
            threads: raw
                .threads
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(2)
                })
                .max(1),
            telemetry: raw.telemetry,
        })
    }
}

/// `telemetry.otlp`: a protocol taphook speaks, a ratio between 0 and 1,
/// an http(s) endpoint.
fn check_telemetry(raw: &Telemetry, doc: &Document, problems: &mut Vec<Problem>) {
    let Some(otlp) = &raw.otlp else { return };
    if let Some(p) = &otlp.protocol {
        if let Err(why) = crate::telemetry::Protocol::parse(p) {
            problems.push(doc.problem(
                "/telemetry/otlp/protocol",
                format!("`telemetry.otlp.protocol`: {why}"),
            ));
        }
    }
    if let Some(r) = otlp.sample_ratio {
        if !(0.0..=1.0).contains(&r) {
            problems.push(doc.problem(
                "/telemetry/otlp/sample_ratio",
                format!("`telemetry.otlp.sample_ratio`: {r} is not between 0 and 1"),
            ));
        }
    }
    if let Some(e) = &otlp.endpoint {
        if let Err(why) = crate::telemetry::check_endpoint(e) {
            problems.push(doc.problem(
                "/telemetry/otlp/endpoint",
                format!("`telemetry.otlp.endpoint`: {why}"),
            ));
        }
    }
}

/// The store section: a JetStream backend needs a `nats://` URL and a
/// prefix NATS accepts in names.
fn lower_store(raw: &RawStore, doc: &Document, problems: &mut Vec<Problem>) -> StoreBackend {
    if raw.backend == RawBackend::Embedded {
        for (key, set) in [
            ("url", raw.url.is_some()),
            ("prefix", raw.prefix.is_some()),
            ("replicas", raw.replicas.is_some()),
            ("buffer", raw.buffer.is_some()),
            ("connect_timeout", raw.connect_timeout.is_some()),
        ] {
            if set {
                problems.push(doc.problem(
                    &format!("/store/{key}"),
                    format!("`store.{key}` is for `backend: jetstream`; the embedded store keeps everything in `data_dir`"),
                ));
            }
        }
        return StoreBackend::Embedded;
    }
    let url = raw.url.clone().unwrap_or_default();
    if url.is_empty() {
        problems.push(doc.problem(
            "/store",
            "`store.url` is required with `backend: jetstream` (nats://host:4222)",
        ));
    } else if let Some(bad) = url
        .split(',')
        .map(str::trim)
        .find(|u| !(u.starts_with("nats://") || u.starts_with("tls://")))
    {
        problems.push(doc.problem(
            "/store/url",
            format!("`store.url`: `{bad}` is not a nats:// URL"),
        ));
    }
    let prefix = raw.prefix.clone().unwrap_or_else(|| "taphook".into());
    if prefix.is_empty()
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        problems.push(doc.problem(
            "/store/prefix",
            format!("`store.prefix`: `{prefix}` must be letters, digits, `_` or `-`"),
        ));
    }
    let replicas = raw.replicas.unwrap_or(1);
    if !(1..=5).contains(&replicas) {
        problems.push(doc.problem(
            "/store/replicas",
            "`store.replicas` must be 1 to 5 (NATS stream replicas)",
        ));
    }
    StoreBackend::JetStream(JetStreamConfig {
        url,
        prefix,
        replicas,
        buffer: raw.buffer.unwrap_or(100_000).max(1),
        connect_timeout: raw.connect_timeout.map_or(Duration::from_secs(5), |d| d.0),
    })
}

/// The funnel section: stage names checked, an event type in one stage only.
fn lower_funnel(raw: &RawFunnel, doc: &Document, problems: &mut Vec<Problem>) -> FunnelConfig {
    let mut stages = BTreeMap::new();
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    // (an event type, the first stage that lists it)
    for (name, events) in &raw.stages {
        let Some(stage) = Stage::parse(name) else {
            let known: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
            problems.push(doc.problem(
                &format!("/funnel/stages/{name}"),
                format!(
                    "`funnel.stages`: unknown stage `{name}` (stages: {})",
                    known.join(", ")
                ),
            ));
            continue;
        };
        let Some(events) = events
            .as_array()
            .and_then(|a| a.iter().map(|e| e.as_str()).collect::<Option<Vec<&str>>>())
        else {
            problems.push(doc.problem(
                &format!("/funnel/stages/{name}"),
                format!("`funnel.stages.{name}`: expected a list of event types"),
            ));
            continue;
        };
        for (i, event) in events.iter().enumerate() {
            if let Some(other) = seen.insert(event, name.as_str()) {
                problems.push(doc.problem(
                    &format!("/funnel/stages/{name}/{i}"),
                    format!(
                        "`funnel.stages`: event type `{event}` is in both `{other}` and `{name}`"
                    ),
                ));
            }
        }
        stages.insert(stage, events.iter().map(|e| e.to_string()).collect());
    }
    let stall_after = raw
        .stall_after
        .map_or(Some(Duration::from_secs(30 * 60)), |d| {
            Some(d.0).filter(|d| !d.is_zero())
        });
    FunnelConfig::new(&stages, stall_after, raw.max_template_keys.unwrap_or(50))
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`) or one
/// address (`/32` or `/128`): the network's address and prefix length.
/// Bits set past the prefix are refused: `10.1.2.3/8` is more likely a
/// typo than a way to write `10.0.0.0/8`.
pub fn parse_cidr(text: &str) -> Result<(std::net::IpAddr, u8), String> {
    use std::net::IpAddr;
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr.trim().parse().map_err(|_| {
        format!("invalid CIDR `{text}`: `{addr}` is not an IP address (write e.g. 10.0.0.0/8 or fd00::/8)")
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| {
                format!("invalid CIDR `{text}`: the prefix length must be a number from 0 to {max}")
            })?,
    };
    let network = match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    };
    if network != addr {
        return Err(format!(
            "invalid CIDR `{text}`: bits are set past the /{prefix} prefix (the network is {network}/{prefix})"
        ));
    }
    Ok((addr, prefix))
}

/// The TLS keys that go together: a client key with its certificate,
/// `upstream_tls` only for an `https` upstream, no `listen_h2c` with `tls`
/// (over TLS, HTTP/2 is chosen by ALPN).
fn check_tls(raw: &RawConfig, _base: &Path, doc: &Document, problems: &mut Vec<Problem>) {
    let t = &raw.upstream_tls;
    if t.client_cert.is_some() != t.client_key.is_some() {
        problems.push(doc.problem(
            "/upstream_tls",
            "`client_cert` and `client_key` go together: give both or neither",
        ));
    }
    let https = raw.upstream.starts_with("https://");
    if !https && *t != UpstreamTls::default() {
        problems.push(doc.problem(
            "/upstream_tls",
            "`upstream_tls` is for an `https://` upstream; this one is plain http",
        ));
    }
    if raw.listen_h2c && raw.tls.is_some() {
        problems.push(doc.problem(
            "/listen_h2c",
            "`listen_h2c` is HTTP/2 without TLS; with `tls`, clients choose HTTP/2 by ALPN",
        ));
    }
}

/// `http://host:port` or `https://host:port`.
fn parse_upstream(text: &str) -> Result<Upstream, String> {
    // Messages never echo the URL: it may carry credentials.
    let url = reqwest::Url::parse(text).map_err(|e| format!("`upstream`: invalid URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "`upstream`: scheme `{}` is not supported: use http:// or https://",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("`upstream`: credentials in the URL are not supported".into());
    }
    if url.path() != "/" && !url.path().is_empty() || url.query().is_some() {
        return Err("`upstream`: give only http(s)://host:port, without a path or query".into());
    }
    let host = url.host_str().ok_or("`upstream`: the URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(Upstream {
        host,
        port: url.port_or_known_default().unwrap_or(80),
        tls: url.scheme() == "https",
    })
}

impl Upstream {
    /// Resolves the host once (at start): the proxy connects to this
    /// address, so no request ever waits on DNS.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        use std::net::ToSocketAddrs;
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve upstream host `{}`: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("upstream host `{}` has no address", self.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, Problems> {
        let env = |n: &str| (n == "TOKEN").then(|| "t0k".to_string());
        let doc = Document::parse(Path::new("taphook.yaml"), text, &env)?;
        Config::from_document(&doc, Path::new("/etc/taphook"))
    }

    #[test]
    fn defaults_and_paths() {
        let c = load("upstream: http://127.0.0.1:9000\nadmin_token: ${TOKEN}\n").unwrap();
        assert_eq!(
            c.upstream,
            Upstream {
                host: "127.0.0.1".into(),
                port: 9000,
                tls: false,
            }
        );
        assert_eq!(c.rules_dir, Path::new("/etc/taphook/./rules"));
        assert_eq!(c.admin_token.as_ref().map(Secret::expose), Some("t0k"));
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.dedup_ttl, Duration::from_secs(86400));
        assert!(c.delivery.allow_private_networks.is_empty());
        let c = load(
            "upstream: http://x:1\ndelivery:\n  allow_private_networks: [127.0.0.0/8, \"::1\"]\n",
        )
        .unwrap();
        let shown: Vec<String> = c
            .delivery
            .allow_private_networks
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["127.0.0.0/8", "::1/128"]);
    }

    #[test]
    fn the_tap_waits_by_default_and_can_drop() {
        let c = load("upstream: http://x:1\n").unwrap();
        assert_eq!(c.tap_when_full, WhenFull::Wait(Duration::from_secs(5)));
        let c = load("upstream: http://x:1\ntap:\n  max_wait: 250ms\n").unwrap();
        assert_eq!(c.tap_when_full, WhenFull::Wait(Duration::from_millis(250)));
        let c = load("upstream: http://x:1\ntap: { when_full: drop }\n").unwrap();
        assert_eq!(c.tap_when_full, WhenFull::Drop);
        let err = load("upstream: http://x:1\ntap:\n  when_full: block\n").unwrap_err();
        assert!(
            err.to_string().starts_with("taphook.yaml:3:") && err.to_string().contains("block"),
            "{err}"
        );
    }

    #[test]
    fn cidrs() {
        use std::net::IpAddr;
        let ok = |t: &str| parse_cidr(t).unwrap();
        assert_eq!(ok("10.0.0.0/8"), ("10.0.0.0".parse::<IpAddr>().unwrap(), 8));
        assert_eq!(
            ok("192.168.1.7"),
            ("192.168.1.7".parse::<IpAddr>().unwrap(), 32)
        );
        assert_eq!(ok("fd00::/8"), ("fd00::".parse::<IpAddr>().unwrap(), 8));
        assert_eq!(ok("0.0.0.0/0").1, 0);
        assert_eq!(ok("::/0").1, 0);
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "intranet",
            "172.16.0.0/",
            "10.0.0.0/-1",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_cidr("192.168.1.1/16").unwrap_err(),
            "invalid CIDR `192.168.1.1/16`: bits are set past the /16 prefix (the network is 192.168.0.0/16)"
        );
    }

    #[test]
    fn errors_name_the_line() {
        let err =
            load("upstream: http://127.0.0.1:9000\ndelivery:\n  timeout: soon\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("taphook.yaml:3: `delivery.timeout`: invalid duration `soon`"),
            "{err}"
        );
        let c = load("upstream: https://importer.internal\nupstream_tls:\n  ca: ca.pem\n  server_name: importer\n").unwrap();
        assert_eq!((c.upstream.port, c.upstream.tls), (443, true));
        assert_eq!(
            c.upstream_tls.ca.as_deref(),
            Some(Path::new("/etc/taphook/ca.pem"))
        );
        let err = load("upstream: ftp://x:1\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("taphook.yaml:1: `upstream`: scheme `ftp`"),
            "{err}"
        );
        let err = load("upstream: http://x:1\nupstream_tls: { ca: ca.pem }\n").unwrap_err();
        assert!(err.to_string().contains("plain http"), "{err}");
        let err =
            load("upstream: https://x:1\nupstream_tls: { client_cert: c.pem }\n").unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
        let err =
            load("upstream: http://x:1\nlisten_h2c: true\ntls: { cert: c.pem, key: k.pem }\n")
                .unwrap_err();
        assert!(err.to_string().contains("ALPN"), "{err}");
        let err = load("upstream: http://user:pw@x:1\n").unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
        let err = load("upstream: http://x:1\nlisten_typo: 1\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `listen_typo`"),
            "{err}"
        );
    }
}
